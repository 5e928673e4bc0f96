"""What became of one case, and how the outcomes of many make one exit code.

A case ends in one of these statuses:

| status | the case's ``crossval-per-token`` | cached |
|---|---|---|
| ``parity`` | exit 0 | yes |
| ``divergence``, ``token-mismatch`` | exit 10 | yes |
| ``candidate-failed`` | exit 11: the candidate crashed, was killed, timed out, or wrote no logits | no |
| ``killed`` | was killed by a signal (128+N): a candidate running inside it (``numpy``), or the system | no |
| ``timeout`` | ran past ``--case-timeout`` and was stopped | no |
| ``bad-input`` | exit 6: something it was given cannot run | no |
| ``error`` | any other exit (1 unusable backend, 3 network, 4 permission, ...) | no |

The suite's exit code (:func:`suite_exit_code`) is 0 when every case reached parity; otherwise
the first of these that applies: 6 when a case had bad input; the code of the first case (in the
file's order) that ended in ``error`` (1 for a code of no other meaning); 11 when a candidate
failed, a case was killed or timed out; 10 when a case diverged. So 10 says every case reached
a verdict and some diverged, and 11 that no case met anything worse than a failing candidate.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from bitnet_crossval.crossval.statistics import PositionValues
from bitnet_crossval.errors import SuiteError
from bitnet_crossval.suite.cases import Case

Status = Literal[
    "parity", "divergence", "token-mismatch", "candidate-failed", "killed", "timeout", "bad-input", "error"
]
STATUSES: tuple[Status, ...] = (
    "parity",
    "divergence",
    "token-mismatch",
    "candidate-failed",
    "killed",
    "timeout",
    "bad-input",
    "error",
)
VERDICTS: frozenset[Status] = frozenset({"parity", "divergence", "token-mismatch"})
"""The statuses of a case that ran to a verdict: the only ones a rerun reuses."""
DIVERGED: frozenset[Status] = frozenset({"divergence", "token-mismatch"})
NO_VERDICT_FROM_CANDIDATE: frozenset[Status] = frozenset({"candidate-failed", "killed", "timeout"})
ERROR_CODES = frozenset({1, 2, 3, 4, 5, 8})
"""Exit codes an ``error`` case passes on to the suite (the environment's: backend, network, ...)."""
REPORT_SCHEMA = "bitnet-crossval/report"


@dataclass(frozen=True, kw_only=True)
class CaseOutcome:
    case: Case
    key: str
    status: Status
    exit_code: int
    """The exit code of the case's own ``crossval-per-token`` (128+N when a signal N ended it)."""
    sentence: str
    """One line on what happened."""
    seconds: float
    cached: bool = False
    error: dict[str, Any] | None = None
    """The command's error (type, message, next_step, exit_code) when it failed."""
    summary: dict[str, Any] | None = None
    """The report's summary (every statistic) when the case reached a verdict."""
    values: PositionValues | None = None
    """Per position: KL, same top-1, Δp (pooled into the suite's statistics)."""
    model: dict[str, Any] | None = None
    report: str | None = None
    log: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "parity"

    @property
    def cacheable(self) -> bool:
        return self.status in VERDICTS

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.case.index,
            "id": self.case.id,
            "options": self.case.to_json(),
            "key": self.key,
            "status": self.status,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "sentence": self.sentence,
            "cached": self.cached,
            "seconds": round(self.seconds, 4),
            "model": self.model,
            "summary": self.summary,
            "values": self.values.to_json() if self.values is not None else None,
            "error": self.error,
            "report": self.report,
            "log": self.log,
        }

    @classmethod
    def from_json(cls, data: Any, *, case: Case | None = None) -> CaseOutcome:
        """The inverse of :meth:`to_json` (``case`` replaces the recorded one: a cached result
        belongs to whichever case has its key now); ``ValueError`` for another shape."""
        if not isinstance(data, dict):
            raise ValueError("a case is not an object")
        status = data.get("status")
        if status not in STATUSES:
            raise ValueError(f"a case has the status {status!r}")
        if case is None:
            options = data.get("options")
            if not isinstance(options, dict) or not all(isinstance(v, (str, bool)) for v in options.values()):
                raise ValueError("a case's options are not an object of strings and booleans")
            case = Case(index=_int(data, "index"), id=_str(data, "id"), options=tuple(options.items()))
        values = data.get("values")
        return cls(
            case=case,
            key=_str(data, "key"),
            status=status,
            exit_code=_int(data, "exit_code"),
            sentence=_str(data, "sentence"),
            seconds=float(_number(data, "seconds")),
            cached=bool(data.get("cached", False)),
            error=_object_or_none(data, "error"),
            summary=_object_or_none(data, "summary"),
            values=PositionValues.from_json(values) if values is not None else None,
            model=_object_or_none(data, "model"),
            report=_str_or_none(data, "report"),
            log=_str_or_none(data, "log"),
        )

    def reused(self, case: Case) -> CaseOutcome:
        """This result, found in the cache, as the outcome of ``case``."""
        return replace(self, case=case, cached=True)


def outcome_from_child(
    case: Case,
    *,
    key: str,
    exit_code: int,
    seconds: float,
    stdout: Path,
    report: Path,
    log: Path,
) -> CaseOutcome:
    """Read what a finished ``crossval-per-token --format json --report REPORT`` left behind."""
    if exit_code in (0, 10):
        document = _read_json(report)
        if isinstance(document, dict) and document.get("schema") == REPORT_SCHEMA:
            return _verdict(document, case=case, key=key, exit_code=exit_code, seconds=seconds, report=report, log=log)
    error = _error_document(stdout)
    status: Status
    if exit_code > 128 and exit_code != 128 + signal.SIGINT:
        status = "killed"
        sentence = f"the case's process was killed by signal {exit_code - 128} ({_signal_name(exit_code - 128)})"
    else:
        if error is None:
            message = (
                "the case's crossval-per-token ended without its report"
                if exit_code in (0, 10)
                else f"the case's crossval-per-token exited with code {exit_code} and printed no error document"
            )
            error = {"type": "UnclassifiedError", "message": message, "next_step": f"read its log {log}"}
        status = "bad-input" if exit_code == 6 else "candidate-failed" if exit_code == 11 else "error"
        sentence = str(error.get("message", ""))
    return CaseOutcome(
        case=case,
        key=key,
        status=status,
        exit_code=exit_code,
        sentence=sentence,
        seconds=seconds,
        error=error,
        log=str(log),
    )


def timed_out(case: Case, *, key: str, timeout: float, seconds: float, log: Path) -> CaseOutcome:
    return CaseOutcome(
        case=case,
        key=key,
        status="timeout",
        exit_code=128 + signal.SIGKILL,
        sentence=f"the case did not finish within {timeout:g}s (--case-timeout) and was stopped",
        seconds=seconds,
        error=None,
        log=str(log),
    )


def not_run(case: Case, *, key: str, error: SuiteError) -> CaseOutcome:
    """A case the suite could not start: its backend is unusable, its model cannot be had."""
    document = error.to_json()
    status: Status = "bad-input" if error.exit_code == 6 else "error"
    return CaseOutcome(
        case=case,
        key=key,
        status=status,
        exit_code=error.exit_code,
        sentence=error.message,
        seconds=0.0,
        error={k: document[k] for k in ("type", "message", "next_step", "exit_code")},
    )


def suite_exit_code(outcomes: list[CaseOutcome]) -> int:
    """The rule in this module's docstring."""
    if any(o.status == "bad-input" for o in outcomes):
        return 6
    for outcome in outcomes:
        if outcome.status == "error":
            return outcome.exit_code if outcome.exit_code in ERROR_CODES else 1
    if any(o.status in NO_VERDICT_FROM_CANDIDATE for o in outcomes):
        return 11
    if any(o.status in DIVERGED for o in outcomes):
        return 10
    return 0


def _verdict(
    document: dict[str, Any], *, case: Case, key: str, exit_code: int, seconds: float, report: Path, log: Path
) -> CaseOutcome:
    verdict = document.get("verdict")
    summary = _dict(document.get("summary"))
    rows = document.get("rows")
    rows = rows if isinstance(rows, list) else []
    model = _dict(document.get("model")) or {}
    status: Status
    if verdict == "parity" and summary is not None:
        status = "parity"
        sentence = f"parity at every one of {summary.get('n_positions')} positions"
    elif verdict == "token-mismatch":
        status = "token-mismatch"
        mismatch = _dict(document.get("token_mismatch")) or {}
        sentence = f"the tokenizer disagrees with the reference's at token index {mismatch.get('first_index')}"
    else:
        status = "divergence"
        sentence = _divergence_sentence(summary, rows)
    return CaseOutcome(
        case=case,
        key=key,
        status=status,
        exit_code=exit_code,
        sentence=sentence,
        seconds=seconds,
        summary=summary,
        values=_values(rows),
        model={k: model.get(k) for k in ("path", "sha256", "name", "architecture", "precision")},
        report=str(report),
        log=str(log),
    )


def _dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _divergence_sentence(summary: dict[str, Any] | None, rows: list[Any]) -> str:
    if summary is None:
        return "parity failed"
    first = summary.get("first_failure")
    reasons = ""
    if isinstance(first, int) and 0 <= first < len(rows) and isinstance(rows[first], dict):
        reasons = f" ({'; '.join(str(r) for r in rows[first].get('reasons') or [])})"
    return (
        f"{summary.get('n_failed')} of {summary.get('n_positions')} positions diverge, "
        f"first at position {first}{reasons}"
    )


def _values(rows: list[Any]) -> PositionValues:
    kl: list[float] = []
    same: list[bool] = []
    delta: list[float] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        kl.append(float(row["kl"]) if isinstance(row.get("kl"), (int, float)) else float("nan"))
        same.append(bool(row.get("top1_agree")))
        p_ref, p_cand = row.get("p_next_ref"), row.get("p_next_cand")
        if isinstance(p_ref, (int, float)) and isinstance(p_cand, (int, float)):
            delta.append(float(p_cand) - float(p_ref))
    return PositionValues(kl=tuple(kl), same_top1=tuple(same), delta_p=tuple(delta))


def _error_document(stdout: Path) -> dict[str, Any] | None:
    document = _read_json(stdout)
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        return {k: error.get(k) for k in ("type", "message", "next_step", "exit_code", "log")}
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


def _str_or_none(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return None if value is None else _str(data, name)


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} is not a whole number")
    return value


def _number(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} is not a number")
    return float(value)


def _object_or_none(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = data.get(name)
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name} is not an object")
    return value
