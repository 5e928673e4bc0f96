"""The results of a suite's cases in the cache, one directory per case key.

A case runs in an attempt directory of its own (per process and case). When it ends, its outcome
is written there (atomically), and the directory is renamed into place, replacing what an
earlier run left there: under the key when the case reached a verdict, where any later run with
the same key finds it and runs nothing; beside it (``<key>.failed``) otherwise, so its log stays
readable. A
rename is atomic, so a run killed at any moment leaves either a finished result or an attempt
directory, which the next run removes once its process is gone.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.suite.cases import Case
from bitnet_crossval.suite.outcome import CaseOutcome
from bitnet_crossval.util.files import dump_json, make_dir, os_error, remove_tree, write_atomic
from bitnet_crossval.util.proc import process_alive

OUTCOME_FILE = "outcome.json"
REPORT_FILE = "report.json"
STDOUT_FILE = "stdout.json"
LOG_FILE = "log.txt"


class ResultStore:
    def __init__(self, cache: CacheLayout) -> None:
        self.cache = cache

    def found(self, key: str, case: Case) -> CaseOutcome | None:
        """The result a run with this key left, as ``case``'s outcome; None when there is none
        (or what is there cannot be read: the case runs again and replaces it)."""
        try:
            data = json.loads((self.cache.case_result(key) / OUTCOME_FILE).read_text(encoding="utf-8"))
            outcome = CaseOutcome.from_json(data, case=case)
        except (OSError, ValueError):
            return None
        return outcome.reused(case) if outcome.key == key and outcome.cacheable else None

    def attempt(self, key: str, case: Case) -> Path:
        """A fresh, empty directory for one run of ``case``."""
        make_dir(self.cache.results)
        directory = self.cache.case_attempt(key, os.getpid(), case.index)
        remove_tree(directory)
        make_dir(directory)
        return directory

    def keep(self, outcome: CaseOutcome, attempt: Path) -> CaseOutcome:
        """Move ``attempt`` into place (replacing what an earlier run left under the same name)
        and return ``outcome`` with its files' final paths."""
        final = self.cache.case_result(outcome.key) if outcome.cacheable else self.cache.case_failure(outcome.key)
        placed = _moved(outcome, attempt, final)
        write_atomic(attempt / OUTCOME_FILE, dump_json(placed.to_json()), what="the case's outcome")
        remove_tree(final)
        try:
            os.replace(attempt, final)
        except OSError as exc:
            if outcome.cacheable and self.found(outcome.key, outcome.case) is not None:
                remove_tree(attempt)  # a run beside this one finished the same key a moment earlier
                return placed
            raise os_error(exc, final) from exc
        return placed

    def remove_leftovers(self) -> None:
        """Attempt directories whose process is gone (a run killed while a case ran)."""
        for directory in self.cache.case_attempts():
            parts = directory.name.split(".")
            pid = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None
            if pid is not None and pid != os.getpid() and not process_alive(pid):
                remove_tree(directory)


def _moved(outcome: CaseOutcome, attempt: Path, final: Path) -> CaseOutcome:
    def relocate(path: str | None) -> str | None:
        if path is None:
            return None
        p = Path(path)
        return str(final / p.name) if p.parent == attempt else path

    return replace(outcome, report=relocate(outcome.report), log=relocate(outcome.log))
