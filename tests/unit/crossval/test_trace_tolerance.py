"""The trace's judgement: the tolerance table's lookup, the logits judged by the verdict's KL, the
first and the worst position of a departure, and when the advice to widen the filters is given."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bitnet_crossval.crossval.metrics import Thresholds
from bitnet_crossval.crossval.result import CrossvalResult
from bitnet_crossval.crossval.trace import TraceComparison, compare_traces
from bitnet_crossval.crossval.trace_tolerance import (
    ANY_KIND,
    BANDS,
    TOLERANCES,
    TRACE_PRECISIONS,
    judged_by_kl,
    tensor_band,
    tensor_kind,
    tolerance_for,
    trace_precision,
)
from tests.unit.crossval.test_trace_compare import KEPT, Trace, perturbed

# --- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        (["F32"], "F32"),
        (["F32", "F64"], "F32"),
        (["F16", "F32"], "F16"),
        (["BF16"], "F16"),
        (["F32", "Q4_K"], "quantized"),
        (["TQ2_0"], "quantized"),
        ([], "quantized"),
    ],
)
def test_the_precision_class_of_a_model(types: list[str], expected: str) -> None:
    assert trace_precision(types) == expected


def test_each_precision_and_band_has_an_entry_for_any_kind_and_looser_classes_are_looser() -> None:
    assert set(TOLERANCES) == set(TRACE_PRECISIONS)
    kinds = set()
    for precision in TRACE_PRECISIONS:
        assert set(TOLERANCES[precision]) == set(BANDS)
        for band in BANDS:
            assert ANY_KIND in TOLERANCES[precision][band]
            kinds |= set(TOLERANCES[precision][band])
    for kind in kinds - {ANY_KIND}:
        for layer in (0, 5):
            f32, f16, quantized = (tolerance_for(f"{kind}-{layer}", p) for p in TRACE_PRECISIONS)
            assert f32 <= f16 <= quantized, (kind, layer)
        for precision in TRACE_PRECISIONS:
            assert tolerance_for(f"{kind}-0", precision) <= tolerance_for(f"{kind}-5", precision), (kind, precision)


def test_the_first_layer_and_the_tensors_before_it_have_their_own_band() -> None:
    assert [tensor_band(n) for n in ("embd", "inp_scaled", "attn_norm-0", "l_out-0")] == ["first layer"] * 4
    deeper = ("attn_norm-1", "l_out-17", "norm", "result_norm", "result_output")
    assert [tensor_band(n) for n in deeper] == ["deeper"] * 5


def test_a_kind_is_its_name_without_the_layer_and_unknown_kinds_take_the_default() -> None:
    assert tensor_kind("attn_norm-12") == "attn_norm"
    assert tensor_kind("result_norm") == "result_norm"
    for band, layer in (("first layer", 0), ("deeper", 3)):
        row = TOLERANCES["F32"][band]  # type: ignore[index]
        for kind, value in row.items():
            if kind != ANY_KIND:
                assert tolerance_for(f"{kind}-{layer}", "F32") == value
        assert tolerance_for(f"some_architectures_own_tensor-{layer}", "F32") == row[ANY_KIND]
    assert judged_by_kl("result_output") and not judged_by_kl("result_norm") and not judged_by_kl("ffn_out-0")


def test_each_tensor_is_held_to_its_own_kinds_tolerance() -> None:
    trace = Trace()
    result = compare_traces(trace.reference(), trace.candidate(), architecture="llama", positions=KEPT, precision="F16")
    assert result.first_departure is None
    for tensor in result.compared:
        if tensor.name != "result_output":
            assert tensor.tolerance == tolerance_for(tensor.name, "F16")
    assert result.to_json()["tolerances"] == {band: dict(row) for band, row in TOLERANCES["F16"].items()}


# --- first and worst position ------------------------------------------------------------------


def test_a_departure_names_its_first_position_and_its_worst() -> None:
    trace = Trace()
    tol = tolerance_for("ffn_out-0", "F32")
    values = trace.full["ffn_out-0"][KEPT]
    noisy = perturbed(values, 2 * tol, rows=slice(1, None))  # departs from position 1 on ...
    noisy[3] = perturbed(values, 50 * tol)[3]  # ... and is worst at position 3
    result = compare_traces(
        trace.reference(), trace.candidate(ffn_out__0=noisy), architecture="llama", positions=KEPT, precision="F32"
    )
    d = result.first_departure
    assert d is not None and d.name == "ffn_out-0"
    assert (d.first_position, d.worst_position) == (1, 3)
    assert "from position 1; worst at position 3" in result.sentence()
    document = json.loads(json.dumps(result.to_json()))
    assert document["first_departure"]["first_position"] == 1 and document["first_departure"]["worst_position"] == 3
    agreeing = next(c for c in result.compared if c.name == "attn_norm-0")
    assert agreeing.agrees and agreeing.first_position is None


def test_a_departure_at_one_position_says_it_is_both_first_and_worst() -> None:
    trace = Trace()
    values = trace.full["Qcur-0"][KEPT]
    noisy = perturbed(values, 10 * tolerance_for("Qcur-0", "F32"), rows=2)
    result = compare_traces(
        trace.reference(), trace.candidate(Qcur__0=noisy), architecture="llama", positions=KEPT, precision="F32"
    )
    d = result.first_departure
    assert d is not None and (d.first_position, d.worst_position) == (2, 2)
    assert "at position 2 (over the tolerance" in result.sentence()


# --- the logits, judged by the verdict's KL ----------------------------------------------------


def _softcapped(logits: np.ndarray, cap: float) -> np.ndarray:
    return (cap * np.tanh(logits.astype(np.float64) / cap)).astype(np.float32)


def test_logits_squeezed_at_the_top_depart_by_kl_though_their_relative_error_is_small() -> None:
    trace = Trace()
    logits = trace.full["result_output"].copy()
    logits[:, 0], logits[:, 1] = 30.0, 27.0  # two likely tokens per position, as a real model's top
    trace.full["result_output"] = logits
    capped = _softcapped(logits[KEPT], 20.0)  # the top is squeezed, the rest barely moves
    rel = np.linalg.norm(capped - logits[KEPT], axis=1) / np.linalg.norm(logits[KEPT], axis=1)
    result = compare_traces(
        trace.reference(),
        trace.candidate(result_output=capped),
        architecture="llama",
        positions=KEPT,
        precision="F32",
        thresholds=Thresholds(kl_max=2e-3),
        rel_tol=float(rel.max()) * 2,  # even a relative error tolerance that lets it pass
    )
    d = result.first_departure
    assert d is not None and d.name == "result_output" and d.judged_by == "KL"
    assert d.max_kl is not None and d.max_kl > 2e-3 and d.max_rel_error < float(rel.max()) * 2
    assert "KL" in result.sentence() and "the verdict's limit" in result.sentence()
    assert result.to_json()["first_departure"]["judged_by"] == "KL"


def test_logits_within_the_verdicts_kl_agree() -> None:
    trace = Trace()
    close = trace.full["result_output"][KEPT] + np.float32(1e-4)  # a shift: the same distribution
    result = compare_traces(
        trace.reference(), trace.candidate(result_output=close), architecture="llama", positions=KEPT, precision="F32"
    )
    out = result.compared[-1]
    assert result.first_departure is None and out.name == "result_output" and out.agrees
    assert out.max_kl is not None and out.max_kl < 1e-6


# --- the advice to widen the filters -----------------------------------------------------------


def _agreeing(*, filtered: bool) -> TraceComparison:
    trace = Trace()
    return compare_traces(
        trace.reference(), trace.candidate(), architecture="llama", positions=KEPT, precision="F32", filtered=filtered
    )


def _departing_at_first_traced(*, filtered: bool) -> TraceComparison:
    trace = Trace()
    bad = perturbed(trace.full["embd"][KEPT], 0.5)
    return compare_traces(
        trace.reference(), trace.candidate(embd=bad), architecture="llama", positions=KEPT, precision="F32",
        filtered=filtered,
    )  # fmt: skip


def _result(trace: TraceComparison, *, filtered: bool) -> CrossvalResult:
    return CrossvalResult(
        verdict="divergence",
        model={},
        reference={},
        candidate={"label": "numpy", "kind": "numpy"},
        tokens=[1, 2, 3],
        n_prompt=1,
        pieces=[],
        thresholds=Thresholds(),
        rows=[],
        summary=None,
        token_mismatch=None,
        timings={},
        trace=trace,
        trace_filtered=filtered,
    )


@pytest.mark.parametrize("filtered", [False, True])
def test_the_advice_to_widen_the_filters_appears_only_when_a_filter_was_set(filtered: bool) -> None:
    agreeing = _agreeing(filtered=filtered)
    departing = _departing_at_first_traced(filtered=filtered)
    assert departing.first_departure is not None and departing.last_agreement is None
    texts = [
        agreeing.sentence(),
        departing.sentence(),
        _result(agreeing, filtered=filtered).next_step(),
        _result(departing, filtered=filtered).next_step(),
    ]
    widen = ["widen" in text for text in texts]
    assert widen == [filtered, False, filtered, filtered]
