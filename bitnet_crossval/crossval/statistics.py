"""Distribution statistics over many positions, as llama.cpp's ``llama-perplexity --kl-divergence``
reports them: how far a candidate's distributions are from the reference's, and how often and how
much the probability of the actual next token moves.

Given, per position, KL(P_ref || P_cand) in nats, whether both top-1 tokens are the same, and
(where a next token exists) Δp = p_cand(next) - p_ref(next):

- ``mean_kl``, ``median_kl``, ``p90_kl``, ``p99_kl``, ``p999_kl``, ``max_kl``: the KL values'
  mean, median and 90th / 99th / 99.9th percentiles, linearly interpolated between the sorted
  values (``numpy.percentile``'s default, and the interpolation llama.cpp's tool uses), and maximum;
- ``same_top1``: the fraction of positions whose top-1 tokens are the same ("Same top p");
- ``mean_delta_p`` and ``rms_delta_p``: the mean and root mean square of Δp over the positions
  that have a next token (llama.cpp's "Mean Δp" and "RMS Δp", as fractions, not percentages).

One computation serves a single run (its summary), a case of a suite, and a whole suite (every
position of every case pooled), so the three always agree on what a number means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bitnet_crossval.util.jsonsafe import jsonable

KL_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclass(frozen=True, kw_only=True)
class PositionValues:
    """The per-position values the statistics are made of, in position order (a suite's report
    carries them per case, so a merge can pool positions across shards)."""

    kl: tuple[float, ...]
    same_top1: tuple[bool, ...]
    delta_p: tuple[float, ...]
    """p_cand(next) - p_ref(next) at every position that has a next token (all but the last)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(
            {"kl": list(self.kl), "same_top1": list(self.same_top1), "delta_p": list(self.delta_p)}
        )
        return data

    @classmethod
    def from_json(cls, data: Any) -> PositionValues:
        """The inverse of :meth:`to_json`; ``ValueError`` when ``data`` is not that shape."""
        if not isinstance(data, dict):
            raise ValueError("position values are not an object")
        kl = _numbers(data.get("kl"), "kl")
        delta_p = _numbers(data.get("delta_p"), "delta_p")
        same = data.get("same_top1")
        if not isinstance(same, list) or not all(isinstance(v, bool) for v in same) or len(same) != len(kl):
            raise ValueError("same_top1 is not a list of booleans, one per position")
        return cls(kl=tuple(kl), same_top1=tuple(same), delta_p=tuple(delta_p))

    @staticmethod
    def pooled(parts: Sequence[PositionValues]) -> PositionValues:
        """Every position of ``parts``, in order."""
        return PositionValues(
            kl=tuple(v for part in parts for v in part.kl),
            same_top1=tuple(v for part in parts for v in part.same_top1),
            delta_p=tuple(v for part in parts for v in part.delta_p),
        )


@dataclass(frozen=True, kw_only=True)
class KlStatistics:
    n_positions: int
    mean_kl: float
    median_kl: float
    p90_kl: float
    p99_kl: float
    p999_kl: float
    max_kl: float
    same_top1: float
    n_delta_p: int
    """Positions that have a next token, over which the Δp statistics are taken."""
    mean_delta_p: float
    rms_delta_p: float

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = jsonable(asdict(self))
        return data


def kl_statistics(values: PositionValues) -> KlStatistics:
    """The statistics of ``values``; every number is 0 (and ``same_top1`` 1) over no positions."""
    kl = np.asarray(values.kl, dtype=np.float64)
    delta = np.asarray(values.delta_p, dtype=np.float64)
    if kl.size:
        median, p90, p99, p999 = (float(v) for v in np.percentile(kl, KL_PERCENTILES))
        mean_kl, max_kl = float(np.mean(kl)), float(np.max(kl))
    else:
        median = p90 = p99 = p999 = mean_kl = max_kl = 0.0
    same = sum(values.same_top1) / len(values.same_top1) if values.same_top1 else 1.0
    return KlStatistics(
        n_positions=int(kl.size),
        mean_kl=mean_kl,
        median_kl=median,
        p90_kl=p90,
        p99_kl=p99,
        p999_kl=p999,
        max_kl=max_kl,
        same_top1=same,
        n_delta_p=int(delta.size),
        mean_delta_p=float(np.mean(delta)) if delta.size else 0.0,
        rms_delta_p=math.sqrt(float(np.mean(delta * delta))) if delta.size else 0.0,
    )


def _numbers(data: Any, name: str) -> list[float]:
    if not isinstance(data, list):
        raise ValueError(f"{name} is not a list")
    numbers: list[float] = []
    for value in data:
        # JSON has no NaN: the report writes a value that is not finite as null.
        if value is None:
            numbers.append(math.nan)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(float(value))
        else:
            raise ValueError(f"{name} holds {value!r}, which is not a number")
    return numbers
