"""Property-style checks of the verdict rule: no NaN or infinity, on either side, and no row that
ranks nothing (all zero, constant) ever reaches agreement, whatever the other numbers are and
however generous the thresholds; and the finding that names them (:mod:`~bitnet_crossval.crossval.nonfinite`).

Each property is tried on a few thousand generated cases from fixed seeds (so a failure
reproduces): logit rows of many shapes and scales (near-uniform, peaked, huge, tiny, float32
extremes), with the unreal values injected at random places.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_crossval.crossval import nonfinite
from bitnet_crossval.crossval.metrics import Thresholds, compare_logits, compare_row, summarize
from bitnet_crossval.util.jsonsafe import jsonable

GENEROUS = Thresholds(kl_max=1e300, tie_margin=1e300)
"""Thresholds that let any two real, ranking rows agree: what stays failing fails on its own."""
THRESHOLDS = [Thresholds(), Thresholds(kl_max=0.1), GENEROUS]
UNREAL = [math.nan, math.inf, -math.inf]
F64 = npt.NDArray[np.float64]


def rows(seed: int, count: int) -> Iterator[F64]:
    """Finite logit rows that rank something: several widths, scales and shapes."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        width = int(rng.choice([2, 3, 7, 50, 300]))
        kind = int(rng.integers(5))
        if kind == 0:
            x = rng.standard_normal(width)
        elif kind == 1:
            x = rng.standard_normal(width) * 1e-6  # nearly uniform
        elif kind == 2:
            x = rng.standard_normal(width) * 1e4  # very peaked
        elif kind == 3:
            x = rng.uniform(-3.0e38, 3.0e38, width)  # float32's range
        else:
            x = np.zeros(width)
            x[rng.integers(width)] = rng.uniform(1e-30, 1.0)  # one logit barely above the rest
        if np.max(x) == np.min(x):
            x[0] += 1.0
        yield np.asarray(x, dtype=np.float64)


def compare(ref: F64, cand: F64, thresholds: Thresholds) -> bool:
    return compare_row(ref, cand, position=0, token=0, next_token=None, thresholds=thresholds).passed


def test_a_row_with_nan_or_infinity_on_either_side_never_agrees() -> None:
    rng = np.random.default_rng(1)
    tried = 0
    for ref in rows(11, 600):
        for side in ("reference", "candidate", "both"):
            bad_ref, bad_cand = ref.copy(), ref.copy()  # identical but for the unreal values
            for target in (
                [bad_ref] if side == "reference" else [bad_cand] if side == "candidate" else [bad_ref, bad_cand]
            ):
                where = rng.choice(target.size, size=int(rng.integers(1, target.size + 1)), replace=False)
                target[where] = rng.choice(UNREAL, size=where.size)
            for thresholds in THRESHOLDS:
                metrics = compare_row(bad_ref, bad_cand, position=0, token=0, next_token=0, thresholds=thresholds)
                assert not metrics.passed, (side, bad_ref, bad_cand)
                assert math.isnan(metrics.kl) and math.isnan(metrics.cosine)  # never a KL of 0
                assert metrics.reasons and all("NaN or infinity" in reason for reason in metrics.reasons)
                assert metrics.p_next_ref is None or side == "candidate"
                tried += 1
    assert tried == 600 * 3 * len(THRESHOLDS)


def test_a_run_with_one_unreal_value_never_passes_and_reports_no_number_for_it() -> None:
    rng = np.random.default_rng(2)
    for n_positions in (1, 2, 5, 17):
        for _ in range(40):
            ref = rng.standard_normal((n_positions, 33))
            cand = ref + rng.standard_normal(ref.shape) * 1e-9
            victim = ref if rng.integers(2) else cand
            victim[rng.integers(n_positions), rng.integers(33)] = rng.choice(UNREAL)
            summary = summarize(compare_logits(ref, cand, list(range(n_positions)), thresholds=GENEROUS))
            assert not summary.passed and summary.n_failed == 1
            assert math.isnan(summary.max_kl) and math.isnan(summary.mean_kl) and math.isnan(summary.min_cosine)
            document = json.loads(json.dumps(summary.to_json(), allow_nan=False))
            assert document["max_kl"] is None and document["passed"] is False


@pytest.mark.parametrize("value", [0.0, 3.0, -7.5, 1e30, -3.0e38])
def test_a_constant_candidate_never_agrees_with_any_reference(value: float) -> None:
    for ref in rows(int(abs(value)) % 97 + 5, 500):
        cand = np.full_like(ref, value)
        for thresholds in THRESHOLDS:
            metrics = compare_row(ref, cand, position=0, token=0, next_token=None, thresholds=thresholds)
            assert not metrics.passed
            assert "the candidate's logits are the same for every token, so they rank nothing" in metrics.reasons


def test_a_constant_reference_never_judges_a_candidate_agreeing() -> None:
    for cand in rows(23, 300):
        for ref in (np.zeros_like(cand), np.full_like(cand, 2.5), cand * 0 + cand[0]):
            assert not compare(ref, cand, GENEROUS)
            assert not compare(ref, ref.copy(), GENEROUS)  # not even with itself


def test_the_rule_is_not_vacuous_real_equal_rows_agree() -> None:
    for ref in rows(31, 500):
        for thresholds in THRESHOLDS:
            assert compare(ref, ref.copy(), thresholds), ref


# --- the finding ------------------------------------------------------------------------------------


def test_find_names_the_positions_and_the_kinds() -> None:
    logits = np.zeros((6, 4), dtype=np.float32)
    logits[2, 1] = np.nan
    logits[2, 2] = np.inf
    logits[5, 0] = -np.inf
    found = nonfinite.find(logits, side="candidate", label="the candidate cmd:x")
    assert found is not None
    assert (found.positions, found.n_positions, found.counts.to_json()) == (
        [2, 5],
        6,
        {"nan": 1, "pos_inf": 1, "neg_inf": 1},
    )
    assert found.sentence() == (
        "the logits of the candidate cmd:x hold NaN and +inf and -inf at 2 of 6 positions, the first at "
        "position 2, which cannot be compared"
    )
    assert found.exit_code == 11 and "--trace" in found.next_step()
    assert nonfinite.find(np.zeros((3, 4)), side="reference", label="the reference") is None


def test_the_reference_side_names_the_weights_and_is_bad_input() -> None:
    logits = np.full((2, 4), np.nan, dtype=np.float32)
    found = nonfinite.find(logits, side="reference", label="the reference")
    assert found is not None and found.exit_code == 6
    named = found.__class__(**{**found.__dict__, "weights": [("output_norm.weight", 256)], "weights_checked": True})
    assert named.sentence().endswith("the model's weights hold NaN or infinity: output_norm.weight (256 values)")
    assert "output_norm.weight" in named.next_step()
    clean = found.__class__(**{**found.__dict__, "weights_checked": True})
    assert clean.sentence().endswith("the model's weights are all finite") and "--trace" in clean.next_step()


def test_first_in_trace_walks_in_order_and_maps_rows_to_positions() -> None:
    ok = np.ones((2, 3), dtype=np.float32)
    bad = ok.copy()
    bad[1, 2] = np.nan
    tensors = [
        nonfinite.TracedTensor(name="embd", layer=None, op="GET_ROWS", load=lambda: ok),
        nonfinite.TracedTensor(name="attn_norm-0", layer=0, op="MUL", load=lambda: ok),
        nonfinite.TracedTensor(name="Qcur-0", layer=0, op="ROPE", load=lambda: bad),
        nonfinite.TracedTensor(name="l_out-0", layer=0, op="ADD", load=lambda: bad),
    ]
    first = nonfinite.first_in_trace(tensors, positions=[4, 7])
    assert first is not None
    assert (first.name, first.positions, first.after) == ("Qcur-0", [7], "attn_norm-0")
    assert first.words() == (
        "layer 0, Qcur-0 (ROPE) holds NaN, first at position 7; everything traced before it is finite "
        "(last: attn_norm-0)"
    )
    assert nonfinite.first_in_trace(tensors[:2], positions=[4, 7]) is None


def test_the_finding_is_strict_json() -> None:
    found = nonfinite.find(np.array([[np.inf, 0.0]]), side="reference", label="the reference")
    assert found is not None
    document = json.loads(json.dumps(jsonable(found.to_json()), allow_nan=False))
    assert document["side"] == "reference" and document["counts"]["pos_inf"] == 1 and document["exit_code"] == 6
