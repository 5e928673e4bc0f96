"""Cross-validation of a candidate engine against a C++ reference, position by position.

:func:`run_crossval` is the whole run (see :mod:`bitnet_crossval.crossval.run`); the engine
(:mod:`~bitnet_crossval.crossval.engine`), the candidates, the metrics and the report each have
a module of their own.
"""

from __future__ import annotations

from bitnet_crossval.crossval.candidates import CandidateSpec, parse_candidate
from bitnet_crossval.crossval.metrics import PositionMetrics, Summary, Thresholds
from bitnet_crossval.crossval.models import ModelChoice, parse_model
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.crossval.result import CrossvalResult
from bitnet_crossval.crossval.run import run_crossval

__all__ = [
    "CandidateSpec",
    "CrossvalRequest",
    "CrossvalResult",
    "ModelChoice",
    "PositionMetrics",
    "Summary",
    "Thresholds",
    "parse_candidate",
    "parse_model",
    "run_crossval",
]
