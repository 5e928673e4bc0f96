"""Comparing a candidate's trace with the reference's, tensor by tensor (no C++ here).

The traces are arrays built here, laid out like the shim's (the token axis first, only the kept
positions; Q/K/V ``[n, n_head, head_dim]``) and in llama.cpp's execution order, so every case
knows its answer: where the first departure is, what agrees before it, what is missing, which
layout mapping makes a candidate's array comparable, and which bad options are bad input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from bitnet_crossval.crossval.engine import split_key
from bitnet_crossval.crossval.trace import (
    RefTensor,
    TraceComparison,
    candidate_views,
    compare_tensor,
    compare_traces,
    parse_layers,
    parse_names,
)
from bitnet_crossval.errors import BadInput

F32 = npt.NDArray[np.float32]

N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_FF = 256, 4, 2, 64, 512
N_ALL = 12  # positions the candidate evaluated
KEPT = [0, 1, 2, 3, 4]  # positions the reference kept (0..first failing position)
TOL = 0.02  # one tolerance for every kind here; the table's own rows are tested in test_trace_tolerance

# One llama layer in the order llama.cpp's graph callback sees the kept nodes, then the output.
LAYOUT: list[tuple[str, str, tuple[int, ...]]] = [
    ("embd", "GET_ROWS", (N_EMBD,)),
    ("attn_norm-0", "MUL", (N_EMBD,)),
    ("Qcur-0", "ROPE", (N_HEAD, HEAD_DIM)),
    ("Vcur-0", "RESHAPE", (N_HEAD_KV, HEAD_DIM)),
    ("Kcur-0", "ROPE", (N_HEAD_KV, HEAD_DIM)),
    ("kqv_out-0", "CONT", (N_EMBD,)),
    ("attn_out-0", "MUL_MAT", (N_EMBD,)),
    ("ffn_inp-0", "ADD", (N_EMBD,)),
    ("ffn_norm-0", "MUL", (N_EMBD,)),
    ("ffn_gate-0", "MUL_MAT", (N_FF,)),
    ("ffn_up-0", "MUL_MAT", (N_FF,)),
    ("ffn_out-0", "MUL_MAT", (N_EMBD,)),
    ("l_out-0", "ADD", (N_EMBD,)),
    ("result_norm", "MUL", (N_EMBD,)),
    ("result_output", "MUL_MAT", (32,)),
]
NAMES = [name for name, _, _ in LAYOUT]


class Trace:
    """Full arrays (every position) per name; the reference keeps ``positions`` of each."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.full: dict[str, F32] = {
            name: rng.standard_normal((N_ALL, *inner)).astype(np.float32) for name, _, inner in LAYOUT
        }

    def reference(self, positions: Sequence[int] = KEPT) -> list[RefTensor]:
        out = []
        for name, op, _ in LAYOUT:
            kept = np.ascontiguousarray(self.full[name][list(positions)])
            layer = split_key(name)[1]
            out.append(
                RefTensor(
                    name=name,
                    layer=None if layer < 0 else layer,
                    op=op,
                    shape=kept.shape,
                    load=_constant(kept),
                )
            )
        return out

    def candidate(self, positions: Sequence[int] | None = KEPT, /, **replaced: F32) -> dict[str, Callable[[], F32]]:
        """The candidate's trace: the same values (``positions`` of them, None for all), with
        ``replaced`` arrays instead of some (keys with '-' written as '__')."""
        out = {}
        for name in NAMES:
            array = self.full[name] if positions is None else self.full[name][list(positions)]
            out[name] = _constant(np.ascontiguousarray(array))
        for key, array in replaced.items():
            out[key.replace("__", "-")] = _constant(array)
        return out


def _constant(array: F32) -> Callable[[], F32]:
    return lambda: array


def compare(
    trace: Trace,
    candidate: dict[str, Callable[[], F32]] | None,
    *,
    positions: Sequence[int] = KEPT,
    arch: str = "llama",
) -> TraceComparison:
    return compare_traces(
        trace.reference(positions),
        candidate,
        architecture=arch,
        positions=list(positions),
        precision="F32",
        rel_tol=TOL,
    )


def one(trace: Trace, name: str, array: Any, *, arch: str = "llama", positions: Sequence[int] = KEPT) -> Any:
    ref = next(t for t in trace.reference(positions) if t.name == name)
    return compare_tensor(ref, np.asarray(array), architecture=arch, positions=list(positions), rel_tol=TOL)


def perturbed(array: F32, rel: float, *, rows: slice | int = slice(None)) -> F32:
    """``array`` with a relative error of exactly ``rel`` (per position) at ``rows``."""
    out = array.astype(np.float64).copy()
    noise = np.random.default_rng(7).standard_normal(out.shape)
    flat_ref = array.reshape(array.shape[0], -1).astype(np.float64)
    flat_noise = noise.reshape(noise.shape[0], -1)
    scale = rel * np.linalg.norm(flat_ref, axis=1) / np.linalg.norm(flat_noise, axis=1)
    delta = (flat_noise * scale[:, None]).reshape(out.shape)
    out[rows] += delta[rows]
    result: F32 = out.astype(np.float32)
    return result


# --- whole traces ------------------------------------------------------------------------------


def test_identical_traces_agree_everywhere() -> None:
    trace = Trace()
    result = compare(trace, trace.candidate())
    assert result.first_departure is None
    assert [c.name for c in result.compared] == NAMES
    assert all(c.agrees and c.layout == "as is" and c.max_rel_error == 0.0 for c in result.compared)
    assert all(c.min_cosine == pytest.approx(1.0) for c in result.compared)
    assert result.last_agreement is not None and result.last_agreement.name == NAMES[-1]
    assert result.missing_in_candidate == [] and result.only_in_candidate == []
    assert result.candidate_traced
    assert "every traced tensor agrees" in result.sentence()
    document = result.to_json()
    assert document["first_departure"] is None and document["last_agreement"]["name"] == NAMES[-1]
    assert len(document["compared"]) == len(NAMES) and document["positions"] == KEPT


@pytest.mark.parametrize("k", [0, 1, 2, 5, 9, len(NAMES) - 1])
def test_a_perturbation_in_tensor_k_is_the_first_departure(k: int) -> None:
    trace = Trace()
    name = NAMES[k]
    # Tensors after k are perturbed too (a bug propagates); they must never be reached.
    later = {n.replace("-", "__"): perturbed(trace.full[n][KEPT], 0.5) for n in NAMES[k + 1 :]}
    bad = perturbed(trace.full[name][KEPT], 0.1, rows=3)
    result = compare(trace, trace.candidate(**later, **{name.replace("-", "__"): bad}))
    departure = result.first_departure
    assert departure is not None and departure.name == name
    layer = split_key(name)[1]
    assert departure.op == LAYOUT[k][1]
    assert departure.layer == (None if layer < 0 else layer)
    assert departure.max_rel_error == pytest.approx(0.1, rel=1e-3) and not departure.agrees
    assert departure.worst_position == 3
    assert departure.shape == [len(KEPT), *LAYOUT[k][2]]
    assert [c.name for c in result.compared] == NAMES[: k + 1]
    if k == 0:
        assert result.last_agreement is None
        assert "everything before it agrees" not in result.sentence()
    else:
        assert result.last_agreement is not None and result.last_agreement.name == NAMES[k - 1]
        assert f"(last: {NAMES[k - 1]})" in result.sentence()
    sentence = result.sentence()
    assert f"{name} ({LAYOUT[k][1]}) first departs" in sentence and "at position 3" in sentence
    assert result.to_json()["first_departure"]["name"] == name


def test_an_error_within_the_tolerance_agrees() -> None:
    trace = Trace()
    close = perturbed(trace.full["Qcur-0"][KEPT], TOL / 2)
    just_out = perturbed(trace.full["ffn_out-0"][KEPT], TOL * 1.5)
    result = compare(trace, trace.candidate(Qcur__0=close, ffn_out__0=just_out))
    assert result.first_departure is not None and result.first_departure.name == "ffn_out-0"
    qcur = next(c for c in result.compared if c.name == "Qcur-0")
    assert qcur.agrees and 0 < qcur.max_rel_error <= TOL


def test_missing_tensors_are_listed_and_the_comparison_goes_on() -> None:
    trace = Trace()
    candidate = trace.candidate(ffn_out__0=perturbed(trace.full["ffn_out-0"][KEPT], 0.3))
    for name in ("Vcur-0", "ffn_gate-0", "result_norm"):
        del candidate[name]
    result = compare(trace, candidate)
    assert result.first_departure is not None and result.first_departure.name == "ffn_out-0"
    # Missing before the departure are listed in the reference's order; after it, nothing is read.
    assert result.missing_in_candidate == ["Vcur-0", "ffn_gate-0"]
    compared = [c.name for c in result.compared]
    assert "Kcur-0" in compared and "ffn_up-0" in compared and "Vcur-0" not in compared
    assert result.last_agreement is not None and result.last_agreement.name == "ffn_up-0"
    assert result.to_json()["missing_in_candidate"] == ["Vcur-0", "ffn_gate-0"]


def test_names_only_the_candidate_wrote_are_listed() -> None:
    trace = Trace()
    extra = np.zeros((len(KEPT), 8), dtype=np.float32)
    result = compare(trace, trace.candidate(zz_debug=extra, my_residual__0=extra, attn_scores__0=extra))
    assert result.first_departure is None
    assert result.only_in_candidate == ["attn_scores-0", "my_residual-0", "zz_debug"]
    assert result.to_json()["only_in_candidate"] == ["attn_scores-0", "my_residual-0", "zz_debug"]


def test_no_candidate_trace_is_said_so() -> None:
    result = compare(Trace(), None)
    assert not result.candidate_traced and result.compared == [] and result.first_departure is None
    assert "wrote no trace" in result.sentence()
    assert result.to_json()["candidate_traced"] is False


def test_an_empty_candidate_trace_is_not_called_agreement() -> None:
    result = compare(Trace(), {})
    assert result.compared == []
    assert "agrees" not in result.sentence()


# --- layouts -------------------------------------------------------------------------------------


def _hf_order(gguf: F32) -> F32:
    """The Hugging Face order of Q/K rows per head, from llama's GGUF order: convert_hf_to_gguf's
    ``permute`` (reshape(n_head, 2, d/2).swapaxes(1, 2)) puts HF row j*d/2 + i at GGUF row 2i + j,
    so HF = GGUF's even rows, then its odd rows."""
    return np.concatenate([gguf[..., 0::2], gguf[..., 1::2]], axis=-1)


def _gguf_from_hf(hf: F32) -> F32:
    """convert_hf_to_gguf's permute on the last axis, written as it is there."""
    d = hf.shape[-1]
    result: F32 = hf.reshape(*hf.shape[:-1], 2, d // 2).swapaxes(-1, -2).reshape(hf.shape)
    return result


def test_the_hf_order_helper_is_the_inverse_of_the_converters_permutation() -> None:
    x = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    assert np.array_equal(_gguf_from_hf(_hf_order(x)), x)
    assert list(_hf_order(x)[0, 0]) == [0, 2, 4, 6, 1, 3, 5, 7]


LAYOUTS: dict[str, tuple[str, Callable[[F32], F32], str]] = {
    # case: (tensor, candidate's array from the reference's [n, ...] array, expected layout)
    "heads merged (Q)": ("Qcur-0", lambda a: a.reshape(a.shape[0], -1), "as is, heads merged"),
    "heads merged (V)": ("Vcur-0", lambda a: a.reshape(a.shape[0], -1), "as is, heads merged"),
    "heads first": ("Kcur-0", lambda a: np.ascontiguousarray(a.transpose(1, 0, 2)), "heads first"),
    "heads first and merged back": (
        "kqv_out-0",
        lambda a: np.ascontiguousarray(a.reshape(a.shape[0], N_HEAD, HEAD_DIM).transpose(1, 0, 2)),
        "heads first, heads split",
    ),
    "heads split": ("kqv_out-0", lambda a: a.reshape(a.shape[0], N_HEAD, HEAD_DIM), "as is, heads split"),
    "transposed 2-D": ("attn_norm-0", lambda a: np.ascontiguousarray(a.T), "transposed"),
    "transposed 2-D (ffn)": ("ffn_gate-0", lambda a: np.ascontiguousarray(a.T), "transposed"),
    "transposed heads merged": (
        "Qcur-0",
        lambda a: np.ascontiguousarray(a.reshape(a.shape[0], -1).T),
        "transposed, heads merged",
    ),
    "hf rotary Q": ("Qcur-0", _hf_order, "as is, rotary halves in Hugging Face order"),
    "hf rotary K": ("Kcur-0", _hf_order, "as is, rotary halves in Hugging Face order"),
    "hf rotary Q heads merged": (
        "Qcur-0",
        lambda a: _hf_order(a).reshape(a.shape[0], -1),
        "as is, heads merged, rotary halves in Hugging Face order",
    ),
    "hf rotary K heads first": (
        "Kcur-0",
        lambda a: np.ascontiguousarray(_hf_order(a).transpose(1, 0, 2)),
        "heads first, rotary halves in Hugging Face order",
    ),
}


@pytest.mark.parametrize("all_positions", [False, True], ids=["kept positions", "every position"])
@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_each_layout_mapping_makes_the_array_comparable(case: str, all_positions: bool) -> None:
    name, to_candidate, layout = LAYOUTS[case]
    trace = Trace()
    source = trace.full[name] if all_positions else trace.full[name][KEPT]
    result = one(trace, name, to_candidate(source))
    assert result.agrees, result
    assert result.layout == layout
    assert result.max_rel_error == pytest.approx(0.0, abs=1e-12)
    # And in a whole trace: the mapping is what the comparison shows for that tensor.
    candidate = trace.candidate(None if all_positions else KEPT, **{name.replace("-", "__"): to_candidate(source)})
    whole = compare(trace, candidate)
    assert whole.first_departure is None
    assert next(c.layout for c in whole.compared if c.name == name) == layout


def test_a_mapped_layout_still_finds_a_real_difference() -> None:
    trace = Trace()
    wrong = perturbed(trace.full["Qcur-0"][KEPT], 0.2, rows=1).reshape(len(KEPT), -1)
    result = one(trace, "Qcur-0", wrong)
    assert not result.agrees and result.layout == "as is, heads merged"
    assert result.max_rel_error == pytest.approx(0.2, rel=1e-3) and result.worst_position == 1


@pytest.mark.parametrize("arch", ["gemma3", "bitnet", "bitnet-b1.58", "LLAMA"])
@pytest.mark.parametrize("name", ["Qcur-0", "Kcur-0"])
def test_the_rotary_mapping_belongs_to_llama_only(arch: str, name: str) -> None:
    trace = Trace()
    hf = _hf_order(trace.full[name][KEPT])
    layouts = [layout for layout, _ in candidate_views(name, arch, hf, hf.shape, KEPT)]
    assert layouts == ["as is"]
    result = one(trace, name, hf, arch=arch)
    assert not result.agrees and result.layout == "as is"


@pytest.mark.parametrize("name", ["Vcur-0", "kqv_out-0", "attn_norm-0", "Qcur_normed-0"])
def test_the_rotary_mapping_belongs_to_q_and_k_only(name: str) -> None:
    trace = Trace()
    source = trace.full["Vcur-0"][KEPT] if name == "Qcur_normed-0" else trace.full[name][KEPT]
    shaped = source.reshape(len(KEPT), N_HEAD, -1) if source.ndim == 2 else source
    layouts = [layout for layout, _ in candidate_views(name, "llama", _hf_order(shaped), shaped.shape, KEPT)]
    assert all("Hugging Face" not in layout for layout in layouts), layouts
    if name == "Vcur-0":
        result = one(trace, name, _hf_order(shaped))
        assert not result.agrees and "Hugging Face" not in result.layout


def test_the_rotary_mapping_is_offered_for_q_and_k_of_every_layer_on_llama() -> None:
    x = np.zeros((len(KEPT), N_HEAD, HEAD_DIM), dtype=np.float32)
    for name in ("Qcur-0", "Kcur-17", "Qcur-123"):
        layouts = [layout for layout, _ in candidate_views(name, "llama", x, x.shape, KEPT)]
        assert layouts == ["as is", "as is, rotary halves in Hugging Face order"], (name, layouts)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("attn_norm-0", (len(KEPT), 3)),  # too small
        ("Qcur-0", (len(KEPT), N_HEAD * HEAD_DIM + 1)),  # one value too many per position
        ("ffn_out-0", (3, N_EMBD)),  # fewer positions than the reference kept
        ("Kcur-0", (N_HEAD_KV * HEAD_DIM,)),  # no token axis
    ],
)
def test_a_shape_that_maps_onto_nothing_departs_with_a_clear_layout(name: str, shape: tuple[int, ...]) -> None:
    trace = Trace()
    expected = [len(KEPT), *next(inner for n, _, inner in LAYOUT if n == name)]
    array = np.ones(shape, dtype=np.float32)
    assert candidate_views(name, "llama", array, tuple(expected), KEPT) == []
    result = one(trace, name, array)
    assert not result.agrees
    assert result.layout == f"shape {list(shape)} does not map onto {expected}"
    assert result.max_rel_error == math.inf and result.min_cosine == 0.0
    document = result.to_json()
    assert document["max_rel_error"] is None and document["layout"] == result.layout
    # In a whole trace it is the first departure, after everything before it agreed.
    whole = compare(trace, trace.candidate(**{name.replace("-", "__"): array}))
    assert whole.first_departure is not None and whole.first_departure.name == name
    assert "does not map onto" in whole.first_departure.layout


def test_an_unknown_3d_layout_is_not_called_heads_merged() -> None:
    trace = Trace()
    q = trace.full["Qcur-0"][KEPT]
    result = one(trace, "Qcur-0", np.ascontiguousarray(q.transpose(0, 2, 1)), arch="gemma3")
    assert not result.agrees
    assert "heads merged" not in result.layout


def test_a_departure_is_reported_in_the_closest_layout() -> None:
    trace = Trace()
    q = perturbed(trace.full["Qcur-0"][KEPT], 0.05)
    result = one(trace, "Qcur-0", _hf_order(q))
    assert not result.agrees
    assert result.layout == "as is, rotary halves in Hugging Face order"
    assert result.max_rel_error == pytest.approx(0.05, rel=1e-3)


# --- non-finite values ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("error")  # nothing is computed on the non-finite values: numpy has nothing to warn of
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_value_in_the_candidate_departs(value: float) -> None:
    trace = Trace()
    bad = trace.full["ffn_up-0"][KEPT].copy()
    bad[2, 17] = value
    result = compare(trace, trace.candidate(ffn_up__0=bad))
    departure = result.first_departure
    assert departure is not None and departure.name == "ffn_up-0"
    assert departure.non_finite == "candidate" and not departure.agrees
    assert math.isnan(departure.max_rel_error) and math.isnan(departure.min_cosine)
    assert "it holds NaN or infinity on the candidate's side at position 2" in result.sentence()
    assert departure.worst_position == 2
    assert result.last_agreement is not None and result.last_agreement.name == "ffn_gate-0"
    document = departure.to_json()
    assert document["max_rel_error"] is None  # JSON never carries NaN or Infinity
    for key in ("max_abs_diff", "min_cosine"):
        assert document[key] is None or math.isfinite(document[key])


# --- positions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", [[0], [0, 1, 2, 3, 4], [1, 3, 6], list(range(N_ALL - 1))])
def test_the_candidates_rows_at_the_kept_positions_are_compared(positions: list[int]) -> None:
    trace = Trace()
    result = compare(trace, trace.candidate(None), positions=positions)  # the candidate wrote every position
    assert result.first_departure is None and all(c.layout == "as is" for c in result.compared)
    assert result.positions == positions

    # A difference at a position the reference did not keep is not looked at ...
    skipped = next(p for p in range(N_ALL) if p not in positions)
    outside = trace.full["Kcur-0"].copy()
    outside[skipped] += 10.0
    assert compare(trace, trace.candidate(None, Kcur__0=outside), positions=positions).first_departure is None

    # ... one at a kept position is found, and reported at its real position.
    inside = trace.full["Kcur-0"].copy()
    inside[positions[-1]] *= 1.5
    result = compare(trace, trace.candidate(None, Kcur__0=inside), positions=positions)
    assert result.first_departure is not None and result.first_departure.name == "Kcur-0"
    assert result.first_departure.worst_position == positions[-1]
    assert result.first_departure.max_rel_error == pytest.approx(0.5, rel=1e-5)


def test_fewer_candidate_positions_than_the_reference_kept_map_onto_nothing() -> None:
    trace = Trace()
    positions = [0, 1, 2, 3, 4, 5, 6]
    short = trace.full["attn_norm-0"][:4]
    result = one(trace, "attn_norm-0", short, positions=positions)
    assert not result.agrees and result.layout == f"shape [4, {N_EMBD}] does not map onto [7, {N_EMBD}]"


# --- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("", None), ("  ", None), ("5", (5, 5)), ("0-3", (0, 3)), (" 2-2 ", (2, 2))]
)
def test_parse_layers_accepts_a_layer_or_a_range(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_layers(text) == expected


@pytest.mark.parametrize("text", ["5-3", "a", "-1", "1-", "1,2", "1..3", "12345", "1-2-3", "٣"])
def test_parse_layers_refuses_anything_else_as_bad_input(text: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_layers(text)
    assert info.value.exit_code == 6
    assert "--trace-layers" in info.value.message
    assert info.value.next_step


@pytest.mark.parametrize(("text", "expected"), [("", None), ("attn_.*", "attn_.*"), (" Qcur-[0-3] ", "Qcur-[0-3]")])
def test_parse_names_accepts_a_regular_expression(text: str, expected: str | None) -> None:
    assert parse_names(text) == expected


@pytest.mark.parametrize("text", ["(", "attn_[", "*Qcur", "a{2,1}"])
def test_parse_names_refuses_a_bad_expression_as_bad_input(text: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_names(text)
    assert info.value.exit_code == 6
    assert "--trace-names" in info.value.message and "not a regular expression" in info.value.message


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("trace_layers", "5-3", "--trace-layers '5-3'"), ("trace_names", "(", "--trace-names '('")],
)
def test_the_task_exits_6_on_a_bad_trace_option_before_anything_runs(
    option: str, value: str, fragment: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitnet_crossval.tasks import _runner
    from bitnet_crossval.tasks.crossval import crossval_per_token

    def no_context() -> None:
        raise AssertionError("the options are checked before the context is read")

    monkeypatch.setattr(_runner, "_context", None)
    monkeypatch.setattr("bitnet_crossval.tasks.crossval.suite_context", no_context)
    with pytest.raises(Exit) as info:
        crossval_per_token(Context(), **{option: value})
    assert info.value.code == 6
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err
