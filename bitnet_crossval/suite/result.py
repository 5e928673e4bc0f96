"""A suite's result and its JSON document; shards' documents merged into the unsharded one.

The document (``--format json``, ``--report FILE``) holds every case's outcome in the cases
file's order and a ``summary`` computed from those outcomes alone: counts by status, the exit
code, and the statistics of every position of every case that reached a verdict, pooled in case
order. So the merge of a suite's shards, which recomputes the summary from the shards' cases,
gives the very ``summary`` one unsharded run gives. What depends on the run (wall time, jobs,
which results came from the cache) lies outside ``summary``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet_crossval.crossval.statistics import PositionValues, kl_statistics
from bitnet_crossval.errors import BadInput
from bitnet_crossval.suite.outcome import DIVERGED, STATUSES, CaseOutcome, suite_exit_code
from bitnet_crossval.suite.shard import Shard
from bitnet_crossval.util.files import read_regular_file

SUITE_SCHEMA = "bitnet-crossval/suite"
SUITE_VERSION = 1
MAX_REPORT_BYTES = 1 << 30


@dataclass(frozen=True, kw_only=True)
class SuiteResult:
    name: str
    cases_file: str
    cases_digest: str
    n_cases_in_file: int
    shard: Shard | None
    outcomes: tuple[CaseOutcome, ...]
    wall_seconds: float
    jobs: int | None = None
    merged_from: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def exit_code(self) -> int:
        return suite_exit_code(list(self.outcomes))

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def counts(self) -> dict[str, int]:
        return {status: sum(o.status == status for o in self.outcomes) for status in STATUSES}

    def values(self) -> PositionValues:
        return PositionValues.pooled([o.values for o in self.outcomes if o.values is not None])

    def summary(self) -> dict[str, Any]:
        counts = self.counts()
        n_diverged = sum(counts[s] for s in DIVERGED)
        return {
            "n_cases": len(self.outcomes),
            "n_passed": counts["parity"],
            "n_diverged": n_diverged,
            "n_failed": len(self.outcomes) - counts["parity"] - n_diverged,
            "statuses": counts,
            "statistics": kl_statistics(self.values()).to_json(),
            "exit_code": self.exit_code,
            "passed": self.passed,
        }

    def counts_sentence(self) -> str:
        """How many cases did not pass, by status."""
        counts = self.counts()
        parts = [f"{counts[s]} {s}" for s in STATUSES if counts[s] and s != "parity"]
        failed = len(self.outcomes) - counts["parity"]
        noun = "case" if len(self.outcomes) == 1 else "cases"
        return f"{failed} of {len(self.outcomes)} {noun} did not pass ({', '.join(parts)})"

    def sentence(self) -> str:
        """One line: how many cases did not pass, and the first of them."""
        first = next((o for o in self.outcomes if not o.passed), None)
        where = f"; the first is {first.case.id!r}: {first.sentence}" if first is not None else ""
        return self.counts_sentence() + where

    def next_step(self) -> str:
        first = next((o for o in self.outcomes if not o.passed), None)
        if first is None:
            return ""
        if first.status in DIVERGED:
            return (
                "rerun that case with crossval-per-token --trace (the report lists its options) to see where it departs"
            )
        if first.log:
            return f"read the case's log {first.log}"
        if first.error and first.error.get("next_step"):
            return str(first.error["next_step"])
        return "rerun with --verbose"

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SUITE_SCHEMA,
            "version": SUITE_VERSION,
            "suite": {
                "name": self.name,
                "cases_file": self.cases_file,
                "cases_digest": self.cases_digest,
                "n_cases": self.n_cases_in_file,
            },
            "shard": self.shard.to_json() if self.shard is not None else None,
            "merged_from": list(self.merged_from),
            "passed": self.passed,
            "exit_code": self.exit_code,
            "summary": self.summary(),
            "cases": [o.to_json() for o in self.outcomes],
            "timings": {
                "wall": round(self.wall_seconds, 4),
                "cases": round(sum(o.seconds for o in self.outcomes), 4),
            },
            "jobs": self.jobs,
            "cached": sum(o.cached for o in self.outcomes),
        }

    @classmethod
    def from_json(cls, document: Any, *, source: str) -> SuiteResult:
        """A suite document read back (a shard's report); :class:`BadInput` naming ``source``
        when it is not one."""
        if not isinstance(document, dict) or document.get("schema") != SUITE_SCHEMA:
            raise BadInput(
                f"{source} is not a crossval-suite report (its schema is not {SUITE_SCHEMA!r})",
                next_step="pass the files that crossval-suite --report wrote",
            )
        if document.get("version") != SUITE_VERSION:
            raise BadInput(
                f"{source} is a crossval-suite report of version {document.get('version')!r}, not {SUITE_VERSION}",
                next_step="merge reports written by this version of the suite",
            )
        try:
            suite = document["suite"]
            shard = document.get("shard")
            timings = document.get("timings") or {}
            return cls(
                name=str(suite["name"]),
                cases_file=str(suite["cases_file"]),
                cases_digest=str(suite["cases_digest"]),
                n_cases_in_file=int(suite["n_cases"]),
                shard=Shard(index=int(shard["index"]), count=int(shard["count"])) if shard else None,
                outcomes=tuple(CaseOutcome.from_json(case) for case in document["cases"]),
                wall_seconds=float(timings.get("wall", 0.0)),
                jobs=document.get("jobs"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(
                f"{source} is a damaged crossval-suite report ({type(exc).__name__}: {exc})",
                next_step="run that shard again",
            ) from None


def merge_results(parts: list[tuple[str, SuiteResult]]) -> SuiteResult:
    """The shards of one suite, each (source, result), as the result of one unsharded run.

    Every shard must be there once, from the same cases file (the same expanded cases); anything
    else is :class:`BadInput` naming the file at fault.
    """
    if not parts:
        raise BadInput("there are no shard reports to merge", next_step="pass the shards' --report files")
    first_source, first = parts[0]
    count = first.shard.count if first.shard is not None else 1
    seen: dict[int, str] = {}
    for source, part in parts:
        if part.cases_digest != first.cases_digest:
            raise BadInput(
                f"{source} is a report of other cases than {first_source} (another cases file, or another version)",
                next_step="merge the shards of one run of one cases file",
            )
        index, of = (part.shard.index, part.shard.count) if part.shard is not None else (1, 1)
        if of != count:
            raise BadInput(
                f"{source} is shard {index}/{of}, while {first_source} is one of {count}",
                next_step="merge the shards of one run, all with the same --shard I/N count",
            )
        if index in seen:
            raise BadInput(
                f"{source} and {seen[index]} are both shard {index}/{count}",
                next_step="pass each shard's report once",
            )
        seen[index] = source
    missing = [i for i in range(1, count + 1) if i not in seen]
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing)
        raise BadInput(
            f"shard {listed} {'is' if len(missing) == 1 else 'are'} missing from the reports to merge",
            next_step="wait for every shard's job (or rerun the failed one) and pass all their reports",
        )
    outcomes = sorted((o for _, part in parts for o in part.outcomes), key=lambda o: o.case.index)
    if [o.case.index for o in outcomes] != list(range(first.n_cases_in_file)):
        raise BadInput(
            f"the shards' reports do not hold each of the {first.n_cases_in_file} cases once",
            next_step="merge the reports crossval-suite --shard wrote, unchanged",
        )
    return SuiteResult(
        name=first.name,
        cases_file=first.cases_file,
        cases_digest=first.cases_digest,
        n_cases_in_file=first.n_cases_in_file,
        shard=None,
        outcomes=tuple(outcomes),
        wall_seconds=max(part.wall_seconds for _, part in parts),
        jobs=None,
        merged_from=tuple(
            {"source": source, "shard": part.shard.to_json() if part.shard else None, "wall": part.wall_seconds}
            for source, part in sorted(parts, key=lambda p: p[1].shard.index if p[1].shard else 1)
        ),
    )


def read_report(path: Path) -> SuiteResult | None:
    """The suite report in ``path``; None when the file is JSON of another kind (a case's report
    beside the shards'); :class:`BadInput` when it cannot be read or is damaged."""
    next_step = "pass the files that crossval-suite --report wrote"
    try:
        data = read_regular_file(path, limit=MAX_REPORT_BYTES)
    except OSError as exc:
        raise BadInput(f"the report {path} cannot be read: {exc.strerror or exc}", next_step=next_step) from None
    if data is None:
        raise BadInput(f"the report {path} is not a regular file", next_step=next_step)
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadInput(f"the report {path} is not JSON", next_step=next_step) from None
    if not isinstance(document, dict) or document.get("schema") != SUITE_SCHEMA:
        return None
    return SuiteResult.from_json(document, source=str(path))
