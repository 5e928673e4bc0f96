"""A suite's JUnit XML: one test case per case of the suite.

``<testsuites>`` holds one ``<testsuite>`` named after the suite. Each case is a ``<testcase>``
(class name: the suite's name; name: the case's id; time: its seconds) whose ``<properties>``
carry its status, key, options and statistics, and for each failing position (the first
:data:`MAX_POSITION_PROPERTIES`) a ``position-NNNN`` property with its KL and whether its top-1
tokens differ. A divergence is a
``<failure>``, a case that reached no verdict an ``<error>``. Everything comes from the suite's
result, so a merge of shards writes the same file one unsharded run writes.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bitnet_crossval.suite.outcome import DIVERGED, CaseOutcome
from bitnet_crossval.suite.result import SuiteResult
from bitnet_crossval.util.files import write_atomic

MAX_POSITION_PROPERTIES = 20
STATISTICS = ("mean_kl", "median_kl", "p90_kl", "p99_kl", "p999_kl", "max_kl", "mean_delta_p", "rms_delta_p")


def junit_xml(result: SuiteResult) -> bytes:
    outcomes = result.outcomes
    failures = sum(o.status in DIVERGED for o in outcomes)
    errors = sum(not o.passed and o.status not in DIVERGED for o in outcomes)
    seconds = f"{sum(o.seconds for o in outcomes):.3f}"
    counts = {"tests": str(len(outcomes)), "failures": str(failures), "errors": str(errors), "time": seconds}
    root = ET.Element("testsuites", {"name": "crossval-suite", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": result.name, **counts, "skipped": "0"})
    for outcome in outcomes:
        _case(suite, outcome, classname=result.name)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


def write_junit(result: SuiteResult, path: Path) -> None:
    write_atomic(path, junit_xml(result), what="the JUnit file")


def _case(parent: ET.Element, outcome: CaseOutcome, *, classname: str) -> None:
    case = ET.SubElement(parent, "testcase", classname=classname, name=outcome.case.id, time=f"{outcome.seconds:.3f}")
    properties = ET.SubElement(case, "properties")
    for name, value in _properties(outcome):
        ET.SubElement(properties, "property", name=name, value=value)
    if outcome.status in DIVERGED:
        ET.SubElement(case, "failure", message=outcome.sentence, type=outcome.status).text = _details(outcome)
    elif not outcome.passed:
        ET.SubElement(case, "error", message=outcome.sentence, type=outcome.status).text = _details(outcome)


def _properties(outcome: CaseOutcome) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = [
        ("index", str(outcome.case.index)),
        ("status", outcome.status),
        ("exit_code", str(outcome.exit_code)),
        ("key", outcome.key),
    ]
    found += [(f"option.{key}", _text(value)) for key, value in sorted(outcome.case.options)]
    summary = outcome.summary or {}
    if summary:
        found.append(("n_positions", _text(summary.get("n_positions"))))
        found.append(("n_failed", _text(summary.get("n_failed"))))
        found += [(name, _text(summary.get(name))) for name in STATISTICS]
        found.append(("same_top1", _text(summary.get("top1_agreement"))))
        if summary.get("first_failure") is not None:
            found.append(("first_failure", _text(summary.get("first_failure"))))
        failed = [p for p in summary.get("failed_positions") or [] if isinstance(p, int)]
        found += _position_properties(outcome, failed[:MAX_POSITION_PROPERTIES])
    return found


def _position_properties(outcome: CaseOutcome, positions: list[int]) -> list[tuple[str, str]]:
    """``position-NNNN`` of a failing position: its KL, and whether the top-1 tokens differ."""
    values = outcome.values
    found = []
    for position in positions:
        if values is None or position >= len(values.kl):
            found.append((f"position-{position:04d}", "failed"))
            continue
        top1 = "" if values.same_top1[position] else ", top-1 differs"
        found.append((f"position-{position:04d}", f"KL {values.kl[position]:.3g}{top1}"))
    return found


def _details(outcome: CaseOutcome) -> str:
    lines = [outcome.sentence]
    if outcome.error and outcome.error.get("next_step"):
        lines.append(f"next: {outcome.error['next_step']}")
    if outcome.log:
        lines.append(f"log: {outcome.log}")
    if outcome.report:
        lines.append(f"report: {outcome.report}")
    return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)
