"""``crossval-suite`` and ``crossval-merge`` as a user runs them, on the fake reference shim: every
case a real ``crossval-per-token`` process of its own (tests/unit/suite/fake_crossval.py), killed
cases, cached results, an interrupted run, shards merged, bad inputs.

The fake reference is the NumPy engine, so ``numpy`` reaches parity and ``numpy:rope_type``
diverges; a ``cmd:`` candidate that SIGKILLs itself fails its case (exit 11), one that SIGKILLs its
parent kills its case's whole process (137), and the other cases go on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.unit.crossval.fake_reference import FakeCache, FakeShim, make_fake_cache

FAKE = Path(__file__).with_name("fake_crossval.py")

KILLER = """\
import os
import signal
import sys


if __name__ == "__main__":
    # "parent": the case's crossval-per-token process, which started this candidate.
    os.kill(os.getppid() if sys.argv[1] == "parent" else os.getpid(), signal.SIGKILL)
"""

CASES = """\
[suite]
name = "unit"

[defaults]
max-tokens = 1

[matrix]
model = ["synthetic:llama", "synthetic:gemma3"]
prompt = ["The quick", "brown fox"]
candidate = ["numpy", "numpy:rope_type"]

[[case]]
name = "candidate killed"
prompt = "The quick"
candidate = "cmd:{python} killer.py self {{model}} {{tokens}} {{out}}"

[[case]]
name = "case process killed"
prompt = "The quick"
candidate = "cmd:{python} killer.py parent {{model}} {{tokens}} {{out}}"
"""
N_CASES = 10


@dataclass(frozen=True)
class Suite:
    directory: Path
    cases: Path
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(FAKE), *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A run in a process group of its own, as a shell starts a job (Ctrl-C reaches the group)."""
        return subprocess.Popen(
            [sys.executable, str(FAKE), *args],
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    @property
    def results(self) -> Path:
        return Path(self.env["BITNET_CACHE_DIR"]) / "results"


def make_suite(root: Path, shim: FakeShim, vocabulary: Path, text: str = CASES) -> Suite:
    cache: FakeCache = make_fake_cache(root / "cache", shim, vocabulary)
    directory = root / "work"
    directory.mkdir()
    (directory / "killer.py").write_text(KILLER)
    cases = directory / "cases.toml"
    cases.write_text(text.format(python=sys.executable))
    env = cache.env(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return Suite(directory=directory, cases=cases, env=env)


def document(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == code, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert any(line.strip().startswith("next: ") for line in result.stderr.splitlines())
    return errors[0]


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, fake_shim: FakeShim, tiny_vocab: Path) -> tuple[Suite, Any]:
    """The suite run once with --jobs 2, from an empty results cache."""
    suite = make_suite(tmp_path_factory.mktemp("suite"), fake_shim, tiny_vocab)
    run = suite.run(
        "crossval-suite", str(suite.cases), "--jobs", "2", "--format", "json", "--report", "r.json", "--junit", "j.xml"
    )
    return suite, run


def test_every_case_runs_in_its_own_process_and_killed_cases_end_only_themselves(first: tuple[Suite, Any]) -> None:
    suite, run = first
    error = one_error(run, 11)
    assert error.startswith(
        "error: the suite failed: 6 of 10 cases did not pass (4 divergence, 1 candidate-failed, 1 killed)"
    )
    doc = document(run)
    assert doc == json.loads((suite.directory / "r.json").read_text())
    assert doc["schema"] == "bitnet-crossval/suite" and doc["exit_code"] == 11 and doc["jobs"] == 2
    statuses = [(c["id"], c["status"]) for c in doc["cases"]]
    assert statuses[:4] == [
        ("synthetic:llama / The quick / numpy", "parity"),
        ("synthetic:llama / The quick / numpy:rope_type", "divergence"),
        ("synthetic:llama / brown fox / numpy", "parity"),
        ("synthetic:llama / brown fox / numpy:rope_type", "divergence"),
    ]
    assert statuses[8:] == [("candidate killed", "candidate-failed"), ("case process killed", "killed")]
    killed = doc["cases"][9]
    assert killed["exit_code"] == 128 + signal.SIGKILL
    assert killed["sentence"] == "the case's process was killed by signal 9 (SIGKILL)"
    assert doc["cases"][8]["sentence"].endswith("was killed by signal 9") and doc["cases"][8]["exit_code"] == 11
    assert Path(killed["log"]).is_file() and Path(killed["log"]).parent.name.endswith(".failed")
    parity = doc["cases"][0]
    assert parity["summary"]["n_positions"] == len(parity["values"]["kl"]) and parity["summary"]["max_kl"] == 0.0
    assert Path(parity["report"]).is_file() and Path(parity["report"]).parent.name == parity["key"]
    stats = doc["summary"]["statistics"]
    assert stats["n_positions"] == sum(c["summary"]["n_positions"] for c in doc["cases"] if c["summary"])
    assert stats["max_kl"] > 0 and 0 < stats["same_top1"] < 1
    assert "overall, " in run.stderr and "KL statistics: mean" in run.stderr
    root = ET.parse(suite.directory / "j.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("10", "4", "2")


def test_a_rerun_reuses_every_verdict_and_runs_the_failed_cases_again(first: tuple[Suite, Any]) -> None:
    suite, before = first
    again = suite.run("crossval-suite", str(suite.cases), "--format", "json")
    one_error(again, 11)
    assert "crossval-suite: 10 cases: 8 reused from earlier runs, 2 to run" in again.stderr
    doc = document(again)
    assert [c["cached"] for c in doc["cases"]] == [True] * 8 + [False] * 2
    assert doc["summary"] == document(before)["summary"]
    assert [c["key"] for c in doc["cases"]] == [c["key"] for c in document(before)["cases"]]


def test_shards_merge_into_what_the_unsharded_run_reports(first: tuple[Suite, Any]) -> None:
    suite, whole = first
    shards = suite.directory / "shards"
    shards.mkdir()
    for index in (1, 2):
        part = suite.run(
            "crossval-suite", str(suite.cases), "--fresh", "--shard", f"{index}/2", "--report", f"shards/{index}.json"
        )
        assert part.returncode == 11, part.stderr[-3000:]
        assert f"crossval-suite: 5 cases (shard {index}/2 of 10): 0 reused from earlier runs, 5 to run" in part.stderr
    (shards / "not-a-suite.json").write_text(json.dumps({"schema": "bitnet-crossval/report"}))
    merged = suite.run("crossval-merge", "shards", "--format", "json", "--junit", "merged.xml")
    one_error(merged, 11)
    assert "skipping" in merged.stderr and "not-a-suite.json" in merged.stderr
    doc, unsharded = document(merged), document(whole)
    assert doc["summary"] == unsharded["summary"]
    assert [(c["id"], c["status"], c["summary"]) for c in doc["cases"]] == [
        (c["id"], c["status"], c["summary"]) for c in unsharded["cases"]
    ]
    merged_cases = ET.parse(suite.directory / "merged.xml").getroot().iter("testcase")
    whole_cases = ET.parse(suite.directory / "j.xml").getroot().iter("testcase")
    assert [c.get("name") for c in merged_cases] == [c.get("name") for c in whole_cases]


def test_the_list_shows_each_case_and_its_shard(first: tuple[Suite, Any]) -> None:
    suite, _ = first
    listed = suite.run("crossval-suite", str(suite.cases), "--list", "--shard", "2/3", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    cases = document(listed)["cases"]
    assert len(cases) == N_CASES and [c["shard"] for c in cases[:4]] == [1, 2, 3, 1]
    assert [c["selected"] for c in cases[:4]] == [False, True, False, False]
    assert "   1  synthetic:llama / The quick / numpy:rope_type (shard 2)" in listed.stderr


INTERRUPTED = """\
[defaults]
max-tokens = 1
candidate = "numpy"
[matrix]
prompt = ["one", "two", "three", "four"]
"""


def wait_for_line(process: subprocess.Popen[str], prefix: str, seen: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if line.startswith(prefix):
            return
    raise AssertionError(f"the suite ended before {prefix!r}: {''.join(seen)[-3000:]}")


def test_an_interrupted_run_keeps_what_finished_and_the_rerun_skips_it(
    tmp_path: Path, fake_shim: FakeShim, tiny_vocab: Path
) -> None:
    suite = make_suite(tmp_path, fake_shim, tiny_vocab, INTERRUPTED)
    running = suite.start("crossval-suite", str(suite.cases))
    seen: list[str] = []
    wait_for_line(running, "[1/4]", seen)
    os.killpg(running.pid, signal.SIGINT)  # Ctrl-C: the suite and the case it runs
    _, rest = running.communicate(timeout=120)
    err = "".join(seen) + (rest or "")
    assert running.returncode == 130, err
    assert "error: interrupted (Ctrl-C); nothing half-written was kept" in err
    assert "next: rerun the same command: the cases that finished are not run again" in err
    assert not [p for p in suite.results.iterdir() if p.name.startswith(".")]  # no attempt left behind
    again = suite.run("crossval-suite", str(suite.cases))
    assert again.returncode == 0, again.stderr[-3000:]
    reused = int(again.stderr.split("crossval-suite: 4 cases: ")[1].split(" reused")[0])
    assert reused >= 1
    assert f"{4 - reused} to run" in again.stderr


def test_a_suite_killed_outright_leaves_an_attempt_the_next_run_removes(
    tmp_path: Path, fake_shim: FakeShim, tiny_vocab: Path
) -> None:
    suite = make_suite(tmp_path, fake_shim, tiny_vocab, INTERRUPTED)
    running = suite.start("crossval-suite", str(suite.cases))
    seen: list[str] = []
    wait_for_line(running, "crossval-suite: 4 cases", seen)
    deadline = time.monotonic() + 60
    while not [p for p in suite.results.glob(".*") if p.is_dir()] and time.monotonic() < deadline:
        time.sleep(0.05)  # the first case's attempt directory: the case is running
    os.killpg(running.pid, signal.SIGKILL)  # the whole job, as a CI runner's cancel does
    running.wait(timeout=60)
    left = [p for p in suite.results.glob(".*") if p.is_dir()]
    assert left, "the kill came after the case had finished"
    again = suite.run("crossval-suite", str(suite.cases))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not any(p.exists() for p in left)
    assert len([p for p in suite.results.iterdir() if not p.name.startswith(".")]) == 4


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["crossval-suite", "{dir}/missing.toml"], 6, "the cases file {dir}/missing.toml does not exist"),
        (["crossval-suite", "{dir}/bad.toml"], 6, "has the key 'modle' in [matrix], which is no option"),
        (["crossval-suite", "{dir}/cases.toml", "--shard", "3/2"], 6, "--shard '3/2' is not I/N with 1 <= I <= N"),
        (["crossval-suite", "{dir}/cases.toml", "--jobs", "-1"], 6, "--jobs '-1' is not a whole number from 0 to 256"),
        (["crossval-suite", "{dir}/cases.toml", "--report", "{dir}/no/r.json"], 6, "the directory of the --report"),
        (["crossval-merge", "{dir}/empty"], 6, "holds no report files"),
        (["crossval-merge", "{dir}/one-shard"], 6, "shard 2/2 is missing from the reports to merge"),
    ],
)
def test_bad_inputs_are_one_sentence_and_exit_6(
    tmp_path: Path, fake_shim: FakeShim, tiny_vocab: Path, args: list[str], code: int, fragment: str
) -> None:
    suite = make_suite(tmp_path, fake_shim, tiny_vocab, INTERRUPTED)
    directory = str(suite.directory)
    (suite.directory / "bad.toml").write_text("[matrix]\nmodle = ['synthetic:llama']\n")
    (suite.directory / "empty").mkdir()
    (suite.directory / "one-shard").mkdir()
    shard = {
        "schema": "bitnet-crossval/suite",
        "version": 1,
        "suite": {"name": "x", "cases_file": "c.toml", "cases_digest": "d", "n_cases": 1},
        "shard": {"index": 1, "count": 2},
        "cases": [],
    }
    (suite.directory / "one-shard" / "1.json").write_text(json.dumps(shard))
    result = suite.run(*[a.replace("{dir}", directory) for a in args], "--format", "json")
    error = one_error(result, code)
    assert fragment.replace("{dir}", directory) in error
    failure = document(result)
    assert failure["ok"] is False and failure["error"]["exit_code"] == code
    assert not suite.results.exists()  # nothing ran


def test_without_a_cases_file_invoke_refuses_the_command(tmp_path: Path, fake_shim: FakeShim, tiny_vocab: Path) -> None:
    suite = make_suite(tmp_path, fake_shim, tiny_vocab, INTERRUPTED)
    result = suite.run("crossval-suite")
    assert result.returncode == 1
    assert "'crossval-suite' did not receive required positional arguments: 'cases'" in result.stderr
