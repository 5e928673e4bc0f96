"""Cross-validation of a candidate engine against a C++ reference, position by position.

:func:`run_crossval` is the whole run (see :mod:`bitnet_crossval.crossval.run`); the engine
(:mod:`~bitnet_crossval.crossval.engine`), the candidates, the metrics and the report each have
a module of their own.

The names below are loaded on first use: the commands' option tables
(:mod:`bitnet_crossval.crossval.options`) live in this package, and listing the commands must
not pay for NumPy and the whole run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitnet_crossval.crossval.candidates import CandidateSpec, parse_candidate
    from bitnet_crossval.crossval.metrics import PositionMetrics, Summary, Thresholds
    from bitnet_crossval.crossval.models import ModelChoice, parse_model
    from bitnet_crossval.crossval.request import CrossvalRequest
    from bitnet_crossval.crossval.result import CrossvalResult
    from bitnet_crossval.crossval.run import run_crossval

_HOMES = {
    "CandidateSpec": "candidates",
    "parse_candidate": "candidates",
    "PositionMetrics": "metrics",
    "Summary": "metrics",
    "Thresholds": "metrics",
    "ModelChoice": "models",
    "parse_model": "models",
    "CrossvalRequest": "request",
    "CrossvalResult": "result",
    "run_crossval": "run",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
