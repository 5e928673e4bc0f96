"""A case's key changes with everything that decides its result and nothing else; the results
store keeps verdicts under their key, failures beside them, and removes what killed runs left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from bitnet_crossval.store.constants import BackendRecord
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.suite.cases import Case
from bitnet_crossval.suite.keys import KeyInputs, backend_facts, case_files, passed_through, suite_version
from bitnet_crossval.suite.outcome import CaseOutcome
from bitnet_crossval.suite.store import OUTCOME_FILE, ResultStore


def case(**options: str | bool) -> Case:
    return Case(index=0, id="c", options=tuple(options.items()))


BASE = KeyInputs(
    options={"model": "synthetic:llama", "max-tokens": "4"},
    model_sha256="a" * 64,
    files={},
    backends={"llama": {"source": {"commit": "0c1e"}, "build_flags": [], "shim_sha256": "s"}},
    environment={},
    suite_version="0.1.0+abc",
)


def test_the_key_follows_everything_that_decides_the_result() -> None:
    key = BASE.key()
    assert key == replace(BASE).key() and len(key) == 64
    changed = [
        replace(BASE, options={"model": "synthetic:llama", "max-tokens": "5"}),
        replace(BASE, model_sha256="b" * 64),
        replace(BASE, files={"/x/engine.py": "c" * 64}),
        replace(BASE, backends={"llama": {"source": {"commit": "ffff"}, "build_flags": [], "shim_sha256": "s"}}),
        replace(BASE, environment={"BITNET_SEED": "1"}),
        replace(BASE, suite_version="0.1.0+abd"),
    ]
    assert len({key, *(inputs.key() for inputs in changed)}) == len(changed) + 1


def test_the_suite_version_is_the_package_version_and_a_digest_of_its_files() -> None:
    version = suite_version()
    assert version.startswith("0.1.0+") and len(version.split("+")[1]) == 16


def test_a_candidates_own_files_are_in_the_key(tmp_path: Path) -> None:
    (tmp_path / "engine.py").write_text("print(1)\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f(m, t): ...\n")
    (tmp_path / "ids.json").write_text("[1, 2]")
    cmd = case_files(case(candidate="cmd:python engine.py {model} {tokens} {out}"), tmp_path)
    assert list(cmd) == [str(tmp_path / "engine.py")]
    assert list(case_files(case(candidate="py:pkg.mod:f"), tmp_path)) == [str(tmp_path / "pkg" / "mod.py")]
    tokens = case_files(case(**{"tokens-file": str(tmp_path / "ids.json"), "candidate": "numpy"}), tmp_path)
    assert list(tokens) == [str(tmp_path / "ids.json")]
    before = cmd[str(tmp_path / "engine.py")]
    (tmp_path / "engine.py").write_text("print(2)\n")
    after = case_files(case(candidate="cmd:python engine.py {model} {tokens} {out}"), tmp_path)
    assert after[str(tmp_path / "engine.py")] != before


def test_backend_facts_and_passed_through_variables() -> None:
    record = BackendRecord(available=True, source={"commit": "c"}, build_flags=["-DX=1"], shim_sha256="s", reason="r")
    assert backend_facts(record) == {"source": {"commit": "c"}, "build_flags": ["-DX=1"], "shim_sha256": "s"}
    assert backend_facts(None) == {}
    assert passed_through({"BITNET_SEED": "3", "PATH": "/bin"}) == {"BITNET_SEED": "3"}


def outcome(key: str, status: str = "parity") -> CaseOutcome:
    return CaseOutcome(
        case=case(model="synthetic:llama"),
        key=key,
        status=status,  # type: ignore[arg-type]
        exit_code=0 if status == "parity" else 11,
        sentence=status,
        seconds=1.0,
    )


def test_a_verdict_is_kept_under_its_key_and_found_again(tmp_path: Path) -> None:
    store = ResultStore(CacheLayout(tmp_path))
    key = "k" * 64
    attempt = store.attempt(key, case())
    (attempt / "report.json").write_text("{}")
    kept = store.keep(replace(outcome(key), report=str(attempt / "report.json")), attempt)
    assert kept.report == str(tmp_path / "results" / key / "report.json") and Path(kept.report).is_file()
    assert not attempt.exists()
    again = store.found(key, case(model="other"))
    assert again is not None and again.cached and again.case.value("model") == "other"
    assert store.found("x" * 64, case()) is None
    # a second run of the same key replaces the first
    attempt = store.attempt(key, case())
    store.keep(replace(outcome(key), sentence="second"), attempt)
    found = store.found(key, case())
    assert found is not None and found.sentence == "second"


def test_a_failure_is_kept_beside_its_key_and_never_found(tmp_path: Path) -> None:
    store = ResultStore(CacheLayout(tmp_path))
    key = "f" * 64
    kept = store.keep(outcome(key, "candidate-failed"), store.attempt(key, case()))
    assert json.loads((tmp_path / "results" / f"{key}.failed" / OUTCOME_FILE).read_text())["status"] == (
        "candidate-failed"
    )
    assert kept.status == "candidate-failed" and store.found(key, case()) is None


def test_an_unreadable_result_is_not_found_and_is_replaced(tmp_path: Path) -> None:
    store = ResultStore(CacheLayout(tmp_path))
    key = "u" * 64
    broken = tmp_path / "results" / key
    broken.mkdir(parents=True)
    (broken / OUTCOME_FILE).write_text("{")
    assert store.found(key, case()) is None
    store.keep(outcome(key), store.attempt(key, case()))
    assert store.found(key, case()) is not None


def test_attempts_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    layout = CacheLayout(tmp_path)
    store = ResultStore(layout)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    gone = layout.case_attempt("d" * 64, dead_pid, 3)
    alive = layout.case_attempt("e" * 64, os.getppid(), 0)
    mine = layout.case_attempt("g" * 64, os.getpid(), 1)
    for directory in (gone, alive, mine):
        directory.mkdir(parents=True)
    store.remove_leftovers()
    assert not gone.exists() and alive.exists() and mine.exists()
