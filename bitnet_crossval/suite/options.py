"""The options of ``crossval-suite`` and ``crossval-merge``, each declared once.

A case's own options are not here: they are ``crossval-per-token``'s, set in the cases file
(:mod:`.cases`). Nothing here takes a lock, reads a model or starts a process.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_crossval.crossval.options import MAX_CANDIDATE_TIMEOUT, REPORT
from bitnet_crossval.errors import BadInput
from bitnet_crossval.suite.defaults import DEFAULT_CASE_TIMEOUT
from bitnet_crossval.util.options import Flag, Integer, Number, Option, OptionValues, PathOption, RawValue, Text

if TYPE_CHECKING:
    from bitnet_crossval.suite.runner import SuiteRequest
    from bitnet_crossval.suite.shard import Shard

MAX_JOBS = 256

CASES = PathOption(name="cases", help="the cases file (TOML) to run", positional=True)
JOBS = Integer(
    name="jobs",
    help="cases run at once, within the cores and the memory (0: as many as they allow)",
    default=1,
    maximum=MAX_JOBS,
    example=2,
)


class ShardOption(Option["Shard | None"]):
    """``--shard I/N``; None when not given (every case runs)."""

    def parse(self, raw: RawValue) -> Shard | None:
        from bitnet_crossval.suite.shard import parse_shard

        text = "" if raw is None else str(raw)
        return parse_shard(text, flag=self.flag) if text.strip() else None

    def type_phrase(self) -> str:
        return "I/N, the I-th of N shards"

    def default_phrase(self) -> str:
        return self.default_text or "every case"


SHARD = ShardOption(name="shard", help="run only the I-th of N shards of the cases (for N CI jobs)")
FRESH = Flag(name="fresh", help="run every case again, ignoring the results earlier runs left in the cache")
CASE_TIMEOUT = Number(
    name="case_timeout",
    help="seconds one case may run before it is stopped",
    unit="seconds",
    minimum=0.0,
    minimum_exclusive=True,
    maximum=MAX_CANDIDATE_TIMEOUT,
    default=DEFAULT_CASE_TIMEOUT,
    example=DEFAULT_CASE_TIMEOUT,
)
LIST = Flag(name="list", help="list the cases (and the shard of each) and run nothing")
SUITE_JUNIT = PathOption(name="junit", help="write a JUnit XML file (one test case per case)")

SUITE_OPTIONS: tuple[Option[Any], ...] = (CASES, JOBS, SHARD, FRESH, CASE_TIMEOUT, LIST)
"""What a :class:`SuiteRequest` is made of (with the cases file read)."""
SUITE_OUTPUTS: tuple[PathOption, ...] = (REPORT, SUITE_JUNIT)

SHARDS = Text(
    name="shards",
    help="the shards' --report files: a directory (each .json file in it) or a glob pattern",
    positional=True,
)
MERGE_OPTIONS: tuple[Option[Any], ...] = (SHARDS,)


def cases_path(values: OptionValues) -> Path:
    path = values[CASES]
    if path is None:
        raise BadInput(
            "crossval-suite needs a cases file",
            next_step="pass one: invoke crossval-suite cases.toml (docs/howto/suites.md shows one)",
        )
    return path


def build_suite_request(values: OptionValues, *, verbose: bool) -> SuiteRequest:
    """The suite the options describe, its cases file read and checked; every problem is :class:`BadInput`."""
    from bitnet_crossval.suite.cases import read_cases_file
    from bitnet_crossval.suite.runner import SuiteRequest  # NumPy and the run: not for every command

    return SuiteRequest(
        cases=read_cases_file(cases_path(values)),
        shard=values[SHARD],
        jobs=values[JOBS],
        fresh=values[FRESH],
        case_timeout=values[CASE_TIMEOUT],
        verbose=verbose,
    )


def shard_reports(values: OptionValues) -> list[Path]:
    """The report files ``SHARDS`` names: every ``*.json`` in a directory, or a glob's matches."""
    text = (values[SHARDS] or "").strip()
    next_step = "pass the directory the shards' --report files are in, or a pattern such as 'shards/*.json'"
    if not text:
        raise BadInput("crossval-merge needs the shards' reports", next_step=next_step)
    path = Path(text).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.glob("*.json") if p.is_file())
        where = f"the directory {path}"
    else:
        found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        where = f"{text!r}"
    if not found:
        raise BadInput(f"{where} holds no report files", next_step=next_step)
    return [p.absolute() for p in found]
