"""Per-position comparison of two sets of logits, and the one verdict rule.

Everything is computed in float64 over the full vocabulary, one position at a time (a row of
a 262k vocabulary is 2 MB in float64; a whole Gemma run at once would be hundreds of MB). The
logits themselves are read a block of rows at a time and a memory-mapped file's pages handed
back after each block (:mod:`~bitnet_crossval.util.npy_rows`), so comparing two files of
thousands of positions holds a block of each, never two ``[n, vocab]`` arrays.
Position ``i`` of the logits scores the token at ``i + 1``, so the probability each side gives
"the actual next token" exists for every position but the last.

The verdict (see docs/explanation/verdict.md for the measurements behind the defaults): a
position agrees when

1. the KL divergence of the candidate's distribution from the reference's, ``KL(P_ref || P_cand)``
   in nats, is at most ``kl_max``; and
2. both pick the same top-1 token, or the two picks are a near tie: each side puts the other's
   pick within ``tie_margin`` nats of its own (a correct engine on a quantised model flips a
   top-1 at such positions; vLLM's model tests accept the same).

A run agrees when every position does; the first position that does not is named.

Only real numbers can agree: a position where either side holds NaN or infinity never does
(its metrics are NaN, never a KL of 0), and neither does one where a side's logits are the same
for every token (they rank nothing: an all-zero or constant candidate is never parity).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.defaults import (
    DEFAULT_KL_MAX_QUANTIZED,
    DEFAULT_TIE_MARGIN,
)
from bitnet_crossval.crossval.statistics import PositionValues, kl_statistics
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.jsonsafe import jsonable
from bitnet_crossval.util.npy_rows import release_rows, rows_per_block

DEFAULT_KL_MAX = DEFAULT_KL_MAX_QUANTIZED
TOP_K = 5


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    kl_max: float = DEFAULT_KL_MAX
    """Largest KL(P_ref || P_cand), in nats, a position may have."""
    tie_margin: float = DEFAULT_TIE_MARGIN
    """How close (in nats of log-probability, on both sides) two different top-1 picks must be to count as a tie."""

    def __post_init__(self) -> None:
        for name, value, example in (
            ("--kl-max", self.kl_max, DEFAULT_KL_MAX),
            ("--tie-margin", self.tie_margin, DEFAULT_TIE_MARGIN),
        ):
            if not (math.isfinite(value) and value >= 0.0):
                raise BadInput(
                    f"{name} {value!r} is not a number of nats of at least 0",
                    next_step=f"pass {name} with a value such as {example}",
                )

    def to_json(self) -> dict[str, float]:
        return {"kl_max": self.kl_max, "tie_margin": self.tie_margin}


@dataclass(frozen=True, kw_only=True)
class PositionMetrics:
    position: int
    token: int
    """The input token at this position."""
    next_token: int | None
    """The token at the next position (what these logits score), None at the last position."""
    cosine: float
    max_abs_diff: float
    nmse: float
    """mean((cand - ref)^2) / var(ref), as llama.cpp's check-nmse.py computes it."""
    kl: float
    """KL(P_ref || P_cand) over the whole vocabulary, in nats."""
    top1_ref: int
    top1_cand: int
    top1_agree: bool
    near_tie: bool
    top5_overlap: int
    p_next_ref: float | None
    p_next_cand: float | None
    passed: bool
    reasons: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(asdict(self))
        return data


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Over every position of a run: the verdict's counts, the KL statistics llama.cpp's
    ``llama-perplexity --kl-divergence`` reports (:mod:`~bitnet_crossval.crossval.statistics`),
    and the worst of the raw-logit measures."""

    n_positions: int
    n_failed: int
    first_failure: int | None
    mean_kl: float
    median_kl: float
    p90_kl: float
    p99_kl: float
    p999_kl: float
    max_kl: float
    top1_agreement: float
    """The fraction of positions whose top-1 tokens are the same (llama.cpp's "Same top p")."""
    mean_delta_p: float
    """Mean of p_cand(next) - p_ref(next) over the positions that have a next token."""
    rms_delta_p: float
    """Root mean square of the same differences."""
    min_cosine: float
    max_nmse: float
    max_abs_diff: float
    n_near_ties: int
    failed_positions: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.n_failed == 0

    @property
    def same_top1(self) -> float:
        """``top1_agreement`` under the name the statistics use."""
        return self.top1_agreement

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable({**asdict(self), "passed": self.passed})
        return data


def compare_row(
    ref: npt.NDArray[np.floating[Any]],
    cand: npt.NDArray[np.floating[Any]],
    *,
    position: int,
    token: int,
    next_token: int | None,
    thresholds: Thresholds,
) -> PositionMetrics:
    """The metrics and the verdict of one position."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    unreal = [side for side, x in (("reference", r), ("candidate", c)) if not np.isfinite(x).all()]
    if unreal:
        return _not_finite(r, c, unreal, position=position, token=token, next_token=next_token)
    diff = c - r
    norm = float(np.linalg.norm(r) * np.linalg.norm(c))
    cosine = float(np.dot(r, c) / norm) if norm > 0.0 else (1.0 if not diff.any() else 0.0)
    variance = float(np.var(r))
    mse = float(np.mean(diff * diff))
    nmse = mse / variance if variance > 0.0 else (0.0 if mse == 0.0 else math.inf)
    logp_r = _log_softmax(r)
    logp_c = _log_softmax(c)
    p_r = np.exp(logp_r)
    kl = _kl(p_r, logp_r, logp_c)
    top1_r, top1_c = int(np.argmax(r)), int(np.argmax(c))
    agree = top1_r == top1_c
    near_tie = not agree and bool(
        logp_r[top1_r] - logp_r[top1_c] <= thresholds.tie_margin
        and logp_c[top1_c] - logp_c[top1_r] <= thresholds.tie_margin
    )
    # On the rows as given (float32 from a file): the same order as their float64 copies, half
    # the bytes to partition.
    top5 = len(set(_top_k(np.asarray(ref), TOP_K)) & set(_top_k(np.asarray(cand), TOP_K)))
    reasons: list[str] = []
    too_far = kl_reason(kl, thresholds.kl_max)
    if too_far:
        reasons.append(too_far)
    if not agree and not near_tie:
        reasons.append(f"top-1 differs ({top1_r} vs {top1_c}) and is no near tie")
    for side, x in (("reference", r), ("candidate", c)):
        if x.size > 1 and float(np.max(x)) == float(np.min(x)):
            reasons.append(f"the {side}'s logits are the same for every token, so they rank nothing")
    return PositionMetrics(
        position=position,
        token=token,
        next_token=next_token,
        cosine=cosine,
        max_abs_diff=float(np.max(np.abs(diff))) if diff.size else 0.0,
        nmse=nmse,
        kl=kl,
        top1_ref=top1_r,
        top1_cand=top1_c,
        top1_agree=agree,
        near_tie=near_tie,
        top5_overlap=top5,
        p_next_ref=float(p_r[next_token]) if next_token is not None else None,
        p_next_cand=float(np.exp(logp_c[next_token])) if next_token is not None else None,
        passed=not reasons,
        reasons=tuple(reasons),
    )


def kl_divergence(r: npt.NDArray[np.float64], c: npt.NDArray[np.float64]) -> float:
    """KL(P_r || P_c) of two finite rows of logits, in nats, as a position's row computes it."""
    logp_r = _log_softmax(r)
    return _kl(np.exp(logp_r), logp_r, _log_softmax(c))


def _kl(p_r: npt.NDArray[np.float64], logp_r: npt.NDArray[np.float64], logp_c: npt.NDArray[np.float64]) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(p_r > 0.0, p_r * (logp_r - logp_c), 0.0)
    kl = float(np.sum(terms))
    return max(0.0, kl) if math.isfinite(kl) else math.inf  # rounding makes a tiny negative KL


def kl_reason(kl: float, kl_max: float) -> str | None:
    """Why a position's KL fails its limit, or None when it does not (NaN never passes)."""
    return None if kl <= kl_max else f"KL {kl:.3g} > {kl_max:.3g}"


def _not_finite(
    r: npt.NDArray[np.float64],
    c: npt.NDArray[np.float64],
    sides: list[str],
    *,
    position: int,
    token: int,
    next_token: int | None,
) -> PositionMetrics:
    """A position where a side holds NaN or infinity: no metric is a number, nothing agrees."""
    nan = math.nan
    return PositionMetrics(
        position=position,
        token=token,
        next_token=next_token,
        cosine=nan,
        max_abs_diff=nan,
        nmse=nan,
        kl=nan,
        top1_ref=int(np.argmax(r)) if "reference" not in sides else -1,
        top1_cand=int(np.argmax(c)) if "candidate" not in sides else -1,
        top1_agree=False,
        near_tie=False,
        top5_overlap=0,
        p_next_ref=None,
        p_next_cand=None,
        passed=False,
        reasons=tuple(f"the {side}'s logits hold NaN or infinity" for side in sides),
    )


def compare_logits(
    ref: npt.NDArray[np.floating[Any]],
    cand: npt.NDArray[np.floating[Any]],
    tokens: Sequence[int],
    *,
    thresholds: Thresholds,
    progress: Callable[[int], None] | None = None,
) -> list[PositionMetrics]:
    """One :class:`PositionMetrics` per position; ``ref`` and ``cand`` are ``[n_tokens, n_vocab]``
    (in memory or memory-mapped files, read a block of rows at a time). ``progress`` hears how
    many positions are compared so far, after each block."""
    if ref.shape != cand.shape or ref.shape[0] != len(tokens):
        raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}, {len(tokens)} tokens")
    n = len(tokens)
    block = rows_per_block(ref.shape[1] if ref.ndim > 1 else 1)
    rows = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        for i in range(start, stop):
            next_token = int(tokens[i + 1]) if i + 1 < n else None
            rows.append(
                compare_row(
                    ref[i], cand[i], position=i, token=int(tokens[i]), next_token=next_token, thresholds=thresholds
                )
            )
        release_rows(ref, start, stop)
        release_rows(cand, start, stop)
        if progress is not None:
            progress(stop)
    return rows


def position_values(rows: Sequence[PositionMetrics]) -> PositionValues:
    """What the distribution statistics are computed from (:mod:`~bitnet_crossval.crossval.statistics`)."""
    return PositionValues(
        kl=tuple(row.kl for row in rows),
        same_top1=tuple(row.top1_agree for row in rows),
        delta_p=tuple(
            row.p_next_cand - row.p_next_ref
            for row in rows
            if row.p_next_cand is not None and row.p_next_ref is not None
        ),
    )


def summarize(rows: Sequence[PositionMetrics]) -> Summary:
    """The run's figures; a maximum or mean over a NaN metric is NaN (``null`` in JSON), never a
    number that looks like agreement."""
    failed = [row.position for row in rows if not row.passed]
    stats = kl_statistics(position_values(rows))
    return Summary(
        n_positions=len(rows),
        n_failed=len(failed),
        first_failure=failed[0] if failed else None,
        max_kl=stats.max_kl,
        mean_kl=stats.mean_kl,
        median_kl=stats.median_kl,
        p90_kl=stats.p90_kl,
        p99_kl=stats.p99_kl,
        p999_kl=stats.p999_kl,
        min_cosine=_extreme(min, [row.cosine for row in rows], default=1.0),
        max_nmse=_extreme(max, [row.nmse for row in rows], default=0.0),
        max_abs_diff=_extreme(max, [row.max_abs_diff for row in rows], default=0.0),
        top1_agreement=stats.same_top1,
        mean_delta_p=stats.mean_delta_p,
        rms_delta_p=stats.rms_delta_p,
        n_near_ties=sum(row.near_tie for row in rows),
        failed_positions=failed,
    )


def _extreme(pick: Callable[[list[float]], float], values: list[float], *, default: float) -> float:
    if not values:
        return default
    if any(math.isnan(v) for v in values):  # max() over NaN depends on the order: never let it pass
        return math.nan
    return pick(values)


def _log_softmax(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    shifted = x - np.max(x)
    result: npt.NDArray[np.float64] = shifted - math.log(float(np.sum(np.exp(shifted))))
    return result


def _top_k(x: npt.NDArray[np.floating[Any]], k: int) -> list[int]:
    k = min(k, x.shape[0])
    part = np.argpartition(x, x.shape[0] - k)[x.shape[0] - k :]
    return [int(i) for i in part]
