"""The per-position metrics and the verdict rule, against formulas written out here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_FLOAT, DEFAULT_KL_MAX_QUANTIZED, DEFAULT_TIE_MARGIN
from bitnet_crossval.crossval.metrics import Thresholds, compare_logits, compare_row, summarize
from bitnet_crossval.errors import BadInput

T = Thresholds()


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    out: np.ndarray = e / e.sum()
    return out


def kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p, q = softmax(p_logits.astype(np.float64)), softmax(q_logits.astype(np.float64))
    return float(np.sum(p * np.log(p / q)))


def row(ref, cand, *, next_token=None, thresholds=T, position=0, token=0):
    return compare_row(
        np.asarray(ref, dtype=np.float32),
        np.asarray(cand, dtype=np.float32),
        position=position,
        token=token,
        next_token=next_token,
        thresholds=thresholds,
    )


def test_defaults_are_the_documented_ones() -> None:
    assert (DEFAULT_KL_MAX_FLOAT, DEFAULT_KL_MAX_QUANTIZED, DEFAULT_TIE_MARGIN) == (0.002, 0.1, 0.5)


def test_identical_logits_agree_perfectly() -> None:
    x = np.random.default_rng(0).standard_normal(1000)
    m = row(x, x, next_token=3)
    assert m.kl == 0.0 and m.nmse == 0.0 and m.max_abs_diff == 0.0
    assert m.cosine == pytest.approx(1.0, abs=1e-12)
    assert m.top1_agree and not m.near_tie and m.top5_overlap == 5
    assert m.p_next_ref == m.p_next_cand == pytest.approx(float(softmax(x.astype(np.float32).astype(np.float64))[3]))
    assert m.passed and m.reasons == ()


def test_metrics_match_their_formulas() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal(500).astype(np.float32) * 3
    cand = (ref + rng.standard_normal(500).astype(np.float32) * 0.3).astype(np.float32)
    m = row(ref, cand, next_token=7)
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    assert m.kl == pytest.approx(kl(r, c), rel=1e-9)
    assert m.cosine == pytest.approx(float(r @ c / np.linalg.norm(r) / np.linalg.norm(c)), rel=1e-12)
    assert m.nmse == pytest.approx(float(np.mean((c - r) ** 2) / np.var(r)), rel=1e-12)
    assert m.max_abs_diff == pytest.approx(float(np.max(np.abs(c - r))))
    assert m.top1_ref == int(np.argmax(r)) and m.top1_cand == int(np.argmax(c))
    assert m.top5_overlap == len(set(np.argsort(-r)[:5]) & set(np.argsort(-c)[:5]))
    assert m.p_next_ref == pytest.approx(float(softmax(r)[7]))
    assert m.p_next_cand == pytest.approx(float(softmax(c)[7]))


def test_kl_is_of_the_candidate_from_the_reference_not_the_other_way() -> None:
    ref = np.array([4.0, 0.0, 0.0, -3.0])
    cand = np.array([0.0, 0.0, 0.0, 0.0])
    forward, backward = kl(ref, cand), kl(cand, ref)
    assert abs(forward - backward) > 0.1  # asymmetric enough to tell apart
    assert row(ref, cand, thresholds=Thresholds(kl_max=10.0)).kl == pytest.approx(forward, rel=1e-6)


def test_a_constant_shift_changes_nothing_the_verdict_reads() -> None:
    """Softmax ignores a constant added to every logit: KL 0 and the same top-1, so parity,
    though NMSE and cosine see the shift."""
    x = np.random.default_rng(2).standard_normal(300)
    m = row(x, x + 5.0)
    assert m.kl == pytest.approx(0.0, abs=1e-9)
    assert m.passed and m.nmse > 1.0


def test_the_kl_limit_decides() -> None:
    ref = np.array([1.0, 0.0, -1.0, 0.5])
    cand = np.array([1.0, 0.1, -1.0, 0.5])
    value = kl(ref, cand)
    assert row(ref, cand, thresholds=Thresholds(kl_max=value * 1.01)).passed
    failing = row(ref, cand, thresholds=Thresholds(kl_max=value * 0.99))
    assert not failing.passed and len(failing.reasons) == 1 and failing.reasons[0].startswith("KL ")
    assert ">" in failing.reasons[0]


def test_a_different_top1_is_accepted_only_as_a_near_tie_on_both_sides() -> None:
    loose = Thresholds(kl_max=1.0, tie_margin=0.5)
    # Two almost equal favourites swapped: a near tie, accepted.
    tie = row([2.0, 1.9, -5.0], [1.9, 2.0, -5.0], thresholds=loose)
    assert not tie.top1_agree and tie.near_tie and tie.passed
    # The candidate's pick is far below the reference's: not a tie, a failure whatever the KL limit.
    far = row([3.0, 0.0, -5.0], [0.0, 0.1, -5.0], thresholds=Thresholds(kl_max=100.0, tie_margin=0.5))
    assert not far.top1_agree and not far.near_tie and not far.passed
    assert any(reason.startswith("top-1 differs (0 vs 1)") for reason in far.reasons)
    # Close on the reference's side only: the candidate is sure of its pick, so no tie either.
    one_sided = row([2.0, 1.9, -5.0], [0.0, 3.0, -5.0], thresholds=Thresholds(kl_max=100.0, tie_margin=0.5))
    assert not one_sided.near_tie and not one_sided.passed


def test_both_reasons_are_given_when_both_rules_fail() -> None:
    m = row([5.0, 0.0, 0.0], [0.0, 5.0, 0.0])
    assert not m.passed and len(m.reasons) == 2


def test_a_constant_reference_row_gives_an_infinite_nmse_that_json_writes_as_null() -> None:
    m = row(np.zeros(10), np.arange(10.0), thresholds=Thresholds(kl_max=100.0, tie_margin=100.0))
    assert math.isinf(m.nmse)
    doc = m.to_json()
    assert doc["nmse"] is None
    json.dumps(doc, allow_nan=False)
    # A reference that ranks nothing judges nothing, however generous the thresholds.
    assert doc["reasons"] == ["the reference's logits are the same for every token, so they rank nothing"]
    assert doc["passed"] is False and type(doc["top1_agree"]) is bool


def test_huge_logits_do_not_overflow() -> None:
    ref = np.array([1e4, -1e4, 0.0, 9999.0])
    m = row(ref, ref + np.array([0.0, 0.0, 0.0, 1.0]), next_token=1, thresholds=Thresholds(kl_max=10.0))
    assert math.isfinite(m.kl) and m.kl > 0 and math.isfinite(m.cosine) and math.isfinite(m.nmse)
    assert m.p_next_ref == 0.0 and m.p_next_cand == 0.0


def test_compare_logits_walks_every_position_and_scores_the_next_token() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((5, 40)).astype(np.float32)
    tokens = [1, 9, 4, 30, 2]
    rows = compare_logits(ref, ref.copy(), tokens, thresholds=T)
    assert [r.position for r in rows] == list(range(5))
    assert [r.token for r in rows] == tokens
    assert [r.next_token for r in rows] == [9, 4, 30, 2, None]
    assert rows[-1].p_next_ref is None and rows[-1].p_next_cand is None
    assert rows[0].p_next_ref == pytest.approx(float(softmax(ref[0].astype(np.float64))[9]), rel=1e-6)


@pytest.mark.parametrize(
    ("ref_shape", "cand_shape", "n_tokens"),
    [((3, 10), (3, 11), 3), ((3, 10), (2, 10), 3), ((3, 10), (3, 10), 4)],
)
def test_compare_logits_refuses_mismatched_shapes(
    ref_shape: tuple[int, int], cand_shape: tuple[int, int], n_tokens: int
) -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        compare_logits(np.zeros(ref_shape), np.zeros(cand_shape), list(range(n_tokens)), thresholds=T)


def test_summary_counts_and_locates_failures() -> None:
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((6, 30)).astype(np.float32)
    cand = ref.copy()
    cand[2] = np.roll(cand[2], 5)
    cand[4] = np.roll(cand[4], 3)
    rows = compare_logits(ref, cand, [0, 1, 2, 3, 4, 5], thresholds=T)
    s = summarize(rows)
    assert (s.n_positions, s.n_failed, s.first_failure, s.failed_positions) == (6, 2, 2, [2, 4])
    assert not s.passed
    assert s.max_kl == max(r.kl for r in rows) and s.mean_kl == pytest.approx(sum(r.kl for r in rows) / 6)
    assert s.min_cosine == min(r.cosine for r in rows)
    assert s.max_nmse == max(r.nmse for r in rows)
    assert s.top1_agreement == pytest.approx(sum(r.top1_agree for r in rows) / 6)
    doc = s.to_json()
    assert doc["passed"] is False and doc["failed_positions"] == [2, 4]
    json.dumps(doc, allow_nan=False)


def test_a_summary_of_agreeing_rows_passes() -> None:
    ref = np.random.default_rng(5).standard_normal((3, 20)).astype(np.float32)
    s = summarize(compare_logits(ref, ref, [0, 1, 2], thresholds=T))
    assert s.passed and s.first_failure is None and s.failed_positions == [] and s.top1_agreement == 1.0


@pytest.mark.parametrize("field", ["kl_max", "tie_margin"])
@pytest.mark.parametrize("value", [-1e-9, math.nan, math.inf, -math.inf])
def test_thresholds_refuse_values_that_are_no_limit(field: str, value: float) -> None:
    with pytest.raises(BadInput, match="is not a number of nats of at least 0"):
        Thresholds(**{field: value})


def test_a_zero_kl_limit_is_allowed_and_demands_exact_agreement() -> None:
    t = Thresholds(kl_max=0.0)
    assert t.to_json() == {"kl_max": 0.0, "tie_margin": DEFAULT_TIE_MARGIN}
    x = np.array([1.0, 2.0, 3.0])
    assert row(x, x, thresholds=t).passed
    assert not row(x, x + np.array([0.0, 0.0, 0.01]), thresholds=t).passed
