"""The distribution statistics (llama.cpp's KL-divergence tool's), against NumPy written out here:
on arrays, and on a whole run of the crossval on the fake reference (the same logits both
sides computed, recomputed directly from the two engines)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bitnet_crossval.context import SuiteContext
from bitnet_crossval.crossval import CrossvalRequest, parse_candidate, parse_model, run_crossval
from bitnet_crossval.crossval.engine import EngineOptions, Fault, FaultName, load_engine
from bitnet_crossval.crossval.metrics import Thresholds, compare_logits, position_values, summarize
from bitnet_crossval.crossval.report import statistics_line
from bitnet_crossval.crossval.statistics import KlStatistics, PositionValues, kl_statistics
from tests.unit.crossval.fake_reference import FakeCache


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return out


def direct(ref: np.ndarray, cand: np.ndarray, tokens: list[int]) -> dict[str, float]:
    """Every statistic from the two logit arrays, by NumPy alone."""
    lr, lc = log_softmax(ref), log_softmax(cand)
    kl = (np.exp(lr) * (lr - lc)).sum(axis=-1)
    nxt = np.asarray(tokens[1:])
    rows = np.arange(len(nxt))
    dp = np.exp(lc[rows, nxt]) - np.exp(lr[rows, nxt])
    return {
        "mean_kl": float(kl.mean()),
        "median_kl": float(np.median(kl)),
        "p90_kl": float(np.percentile(kl, 90)),
        "p99_kl": float(np.percentile(kl, 99)),
        "p999_kl": float(np.percentile(kl, 99.9)),
        "max_kl": float(kl.max()),
        "same_top1": float(np.mean(ref.argmax(axis=-1) == cand.argmax(axis=-1))),
        "mean_delta_p": float(dp.mean()),
        "rms_delta_p": float(np.sqrt((dp * dp).mean())),
    }


def assert_matches(summary_json: dict[str, float], expected: dict[str, float]) -> None:
    got = {**summary_json, "same_top1": summary_json["top1_agreement"]}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-15), name


def test_the_statistics_of_compared_logits_match_numpy_written_out() -> None:
    rng = np.random.default_rng(7)
    n, vocab = 257, 400
    ref = rng.standard_normal((n, vocab)).astype(np.float32) * 3
    # Some positions near the reference, some far from it, some with another top-1.
    noise = rng.standard_normal((n, vocab)).astype(np.float32) * rng.choice([0.01, 0.3, 2.0], size=(n, 1))
    cand = (ref + noise).astype(np.float32)
    tokens = [int(t) for t in rng.integers(0, vocab, size=n)]
    summary = summarize(compare_logits(ref, cand, tokens, thresholds=Thresholds()))
    expected = direct(ref, cand, tokens)
    assert 0.0 < expected["same_top1"] < 1.0 and expected["p999_kl"] > expected["p90_kl"] > 0  # not degenerate
    assert_matches(summary.to_json(), expected)


def test_identical_logits_give_zero_statistics_and_full_agreement() -> None:
    ref = np.random.default_rng(1).standard_normal((5, 50)).astype(np.float32)
    s = summarize(compare_logits(ref, ref.copy(), [1, 2, 3, 4, 5], thresholds=Thresholds()))
    assert (s.mean_kl, s.median_kl, s.p90_kl, s.p99_kl, s.p999_kl, s.max_kl) == (0.0,) * 6
    assert (s.top1_agreement, s.mean_delta_p, s.rms_delta_p) == (1.0, 0.0, 0.0)


def test_percentiles_interpolate_between_sorted_values_as_llama_cpp_does() -> None:
    # llama.cpp: p = fraction * (n - 1); (1 - frac(p)) * v[floor p] + frac(p) * v[floor p + 1].
    values = PositionValues(kl=(4.0, 0.0, 1.0, 3.0, 2.0), same_top1=(True,) * 5, delta_p=())
    s = kl_statistics(values)
    assert s.median_kl == 2.0
    assert s.p90_kl == pytest.approx(3.6)
    assert s.p99_kl == pytest.approx(3.96)
    assert s.p999_kl == pytest.approx(3.996)
    assert s.max_kl == 4.0 and s.mean_kl == 2.0


def test_no_positions_give_zeros() -> None:
    s = kl_statistics(PositionValues(kl=(), same_top1=(), delta_p=()))
    assert s == KlStatistics(
        n_positions=0,
        mean_kl=0.0,
        median_kl=0.0,
        p90_kl=0.0,
        p99_kl=0.0,
        p999_kl=0.0,
        max_kl=0.0,
        same_top1=1.0,
        n_delta_p=0,
        mean_delta_p=0.0,
        rms_delta_p=0.0,
    )


def test_delta_p_leaves_out_the_last_position_which_has_no_next_token() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((4, 30)).astype(np.float32)
    rows = compare_logits(ref, ref + 0.5, [1, 2, 3, 4], thresholds=Thresholds())
    values = position_values(rows)
    assert len(values.kl) == 4 and len(values.delta_p) == 3


def test_position_values_round_trip_through_json_and_pool_in_order() -> None:
    a = PositionValues(kl=(0.1, 0.2), same_top1=(True, False), delta_p=(0.01,))
    b = PositionValues(kl=(0.3,), same_top1=(True,), delta_p=())
    assert PositionValues.from_json(json.loads(json.dumps(a.to_json()))) == a
    pooled = PositionValues.pooled([a, b])
    assert pooled.kl == (0.1, 0.2, 0.3) and pooled.same_top1 == (True, False, True) and pooled.delta_p == (0.01,)
    assert kl_statistics(pooled).mean_kl == pytest.approx(0.2)


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"kl": "x", "same_top1": [], "delta_p": []},
        {"kl": [0.1], "same_top1": [1], "delta_p": []},
        {"kl": [0.1], "same_top1": [True, True], "delta_p": []},
        {"kl": [True], "same_top1": [True], "delta_p": []},
    ],
)
def test_position_values_refuse_another_shape(data: object) -> None:
    with pytest.raises(ValueError):
        PositionValues.from_json(data)


def test_the_statistics_line_prints_delta_p_in_percent() -> None:
    s = kl_statistics(PositionValues(kl=(0.5, 1.5), same_top1=(True, False), delta_p=(-0.02, 0.0)))
    line = statistics_line(s)
    assert "mean 1, median 1," in line and "max 1.5" in line
    assert "same top-1 50.00%" in line and "Δp mean -1.000%, RMS 1.414%" in line


@pytest.mark.usefixtures("one_blas_thread_here")
def test_a_runs_statistics_match_numpy_on_the_same_logits(fake_cache: FakeCache) -> None:
    """The whole flow on the fake reference (the engine without a fault) and a candidate with a
    fault: the summary's statistics are those of the two engines' logits, recomputed here."""
    ctx: SuiteContext = fake_cache.context()
    request = CrossvalRequest(
        model=parse_model("synthetic:llama"),
        candidate=parse_candidate("numpy:rope_type"),
        prompt="The quick brown fox jumps over the lazy dog",
        max_tokens=3,
    )
    result = run_crossval(request, ctx)
    assert result.summary is not None and not result.summary.passed
    model = result.model["path"]
    ref = load_engine(model).forward(result.tokens)
    cand = load_engine(model, EngineOptions(fault=Fault(name=FaultName("rope_type")))).forward(result.tokens)
    expected = direct(np.asarray(ref), np.asarray(cand), result.tokens)
    assert_matches(result.to_json()["summary"], expected)
    assert math.isclose(result.summary.top1_agreement, expected["same_top1"])
