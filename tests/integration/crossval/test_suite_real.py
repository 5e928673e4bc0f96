"""``invoke crossval-suite`` and ``crossval-merge`` against the real pinned llama.cpp, as a user runs
them: synthetic models x prompts x candidates (the NumPy engine and llama.cpp itself), with
``--jobs 2``; a case whose ``cmd:`` candidate SIGKILLs itself and one whose ``cmd:`` candidate
SIGKILLs the case's own process (its parent); a run interrupted with Ctrl-C and run again; the suite in two
shards merged into what one run reports. And the statistics of a llama.cpp-only comparison.

The suite's results live in a cache of its own per test (so every test starts with none), which
shares the session's shim and synthetic models.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO_ROOT, run_invoke
from tests.integration.crossval.conftest import VOCAB_NAME, CrossvalCache, assert_one_error, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

KILLER = """\
import os
import signal
import sys


if __name__ == "__main__":
    # "parent": the case's crossval-per-token process, which started this candidate.
    os.kill(os.getppid() if sys.argv[1] == "parent" else os.getpid(), signal.SIGKILL)
"""

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "In the beginning",
    "The quick brown fox",
    "Water boils at",
]


@dataclass(frozen=True)
class SuiteCache:
    directory: Path
    env: dict[str, str]

    @property
    def results(self) -> Path:
        return Path(self.env["BITNET_CACHE_DIR"]) / "results"

    def run(self, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
        return run_invoke(list(args), env=self.env, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A run in a process group of its own, as a shell starts a job (Ctrl-C reaches the group)."""
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finished(self) -> list[Path]:
        return [p for p in self.results.iterdir() if not p.name.startswith(".") and not p.name.endswith(".failed")]


@pytest.fixture
def suite_cache(crossval_cache: CrossvalCache, tmp_path: Path) -> SuiteCache:
    root = tmp_path / "cache"
    (root / "sources" / "llama-vocab" / "models").mkdir(parents=True)
    shutil.copyfile(crossval_cache.vocab, root / "sources" / "llama-vocab" / "models" / VOCAB_NAME)
    (crossval_cache.root / "models").mkdir(exist_ok=True)
    (root / "models").symlink_to(crossval_cache.root / "models")  # written once, atomically, by whoever is first
    env = dict(crossval_cache.env)
    env.update(
        BITNET_CACHE_DIR=str(root),
        BITNET_CONSTANTS_FILE=str(crossval_cache.root / "constants.json"),
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
    )
    directory = tmp_path / "work"
    directory.mkdir()
    (directory / "killer.py").write_text(KILLER)
    return SuiteCache(directory=directory, env=env)


def write_cases(suite: SuiteCache, models: list[str], prompts: list[str]) -> Path:
    cases = suite.directory / "cases.toml"
    cases.write_text(
        f"""\
[suite]
name = "real"

[defaults]
max-tokens = 1

[matrix]
model = {json.dumps(models)}
prompt = {json.dumps(prompts)}
candidate = ["numpy", "llama"]

[[case]]
name = "candidate killed"
model = "synthetic:llama"
prompt = "The capital of France is"
candidate = "cmd:{sys.executable} killer.py self {{model}} {{tokens}} {{out}}"

[[case]]
name = "case process killed"
model = "synthetic:llama"
prompt = "The capital of France is"
candidate = "cmd:{sys.executable} killer.py parent {{model}} {{tokens}} {{out}}"
"""
    )
    return cases


def interrupt_after_first_case(suite: SuiteCache, cases: Path) -> str:
    running = suite.start("crossval-suite", str(cases), "--jobs", "2", "--repair", "never")
    assert running.stderr is not None
    seen = []
    for line in running.stderr:
        seen.append(line)
        if line.startswith("[1/"):
            os.killpg(running.pid, signal.SIGINT)  # Ctrl-C: the suite and the cases it runs
            break
    else:
        raise AssertionError("the suite ended before its first case: " + "".join(seen)[-3000:])
    _, rest = running.communicate(timeout=300)
    err = "".join(seen) + rest
    assert running.returncode == 130, err[-3000:]
    assert "error: interrupted (Ctrl-C); nothing half-written was kept" in err
    return err


def without_times(junit: Path) -> bytes:
    """The JUnit file with its ``time`` attributes left out (each run takes its own time)."""
    root = ET.parse(junit).getroot()
    for element in root.iter():
        element.attrib.pop("time", None)
    return ET.tostring(root)


def exercise(suite: SuiteCache, models: list[str], prompts: list[str]) -> None:
    cases = write_cases(suite, models, prompts)
    n_matrix = len(models) * len(prompts) * 2
    n_cases = n_matrix + 2

    # 1. Interrupted after the first case: what finished is kept, nothing half-written remains.
    interrupt_after_first_case(suite, cases)
    kept = suite.finished()
    assert kept, "no case had finished when the run was interrupted"
    assert not [p for p in suite.results.iterdir() if p.name.startswith(".")]

    # 2. Run again: the finished cases are reused, the rest run, the killed cases end only themselves.
    junit = suite.directory / "j.xml"
    whole = suite.run(
        "crossval-suite", str(cases), "--jobs", "2", "--repair", "never", "--format", "json", "--junit", str(junit)
    )
    assert_one_error(whole, 11, "the suite failed: 2 of")
    reused = len(kept)
    assert f"crossval-suite: {n_cases} cases: {reused} reused from earlier runs, {n_cases - reused} to run" in (
        whole.stderr
    )
    doc = strict_json(whole.stdout)
    assert doc["jobs"] == 2 and doc["cached"] == reused
    statuses = [c["status"] for c in doc["cases"]]
    assert statuses == ["parity"] * n_matrix + ["candidate-failed", "killed"], statuses
    assert doc["cases"][-1]["exit_code"] == 128 + signal.SIGKILL
    for case in doc["cases"][:n_matrix]:
        stats = case["summary"]
        if case["options"]["candidate"] == "llama":
            # llama.cpp against itself: every statistic is exactly 0, every top-1 the same.
            for name in ("mean_kl", "median_kl", "p90_kl", "p99_kl", "p999_kl", "max_kl"):
                assert stats[name] == 0.0, (case["id"], name, stats[name])
            assert stats["top1_agreement"] == 1.0 and stats["mean_delta_p"] == 0.0 and stats["rms_delta_p"] == 0.0
        else:
            assert 0.0 <= stats["max_kl"] < 1e-3 and stats["top1_agreement"] == 1.0
    overall = doc["summary"]["statistics"]
    assert overall["n_positions"] == sum(c["summary"]["n_positions"] for c in doc["cases"][:n_matrix])
    assert doc["summary"]["n_passed"] == n_matrix and doc["summary"]["exit_code"] == 11

    # 3. Two shards, run afresh, merged: the summary one run gives.
    shards = suite.directory / "shards"
    shards.mkdir()
    for index in (1, 2):
        part = suite.run(
            "crossval-suite",
            str(cases),
            "--shard",
            f"{index}/2",
            "--fresh",
            "--jobs",
            "2",
            "--repair",
            "never",
            "--report",
            str(shards / f"shard-{index}.json"),
        )
        assert part.returncode == 11, part.stderr[-3000:]  # each shard holds one of the killed cases
    merged = suite.run("crossval-merge", str(shards), "--format", "json", "--junit", str(suite.directory / "m.xml"))
    assert_one_error(merged, 11, "the suite failed: 2 of")
    merged_doc = strict_json(merged.stdout)
    assert merged_doc["summary"] == doc["summary"]
    assert without_times(suite.directory / "m.xml") == without_times(junit)  # the same JUnit file but the times
    assert [(c["id"], c["status"], c["key"]) for c in merged_doc["cases"]] == [
        (c["id"], c["status"], c["key"]) for c in doc["cases"]
    ]


def test_a_suite_with_jobs_killed_cases_an_interruption_and_shards(suite_cache: SuiteCache) -> None:
    exercise(suite_cache, ["synthetic:llama", "synthetic:gemma3"], PROMPTS[:2])


@pytest.mark.slow
def test_three_models_five_prompts_two_candidates(suite_cache: SuiteCache) -> None:
    exercise(suite_cache, ["synthetic:llama", "synthetic:gemma3", "synthetic:bitnet"], PROMPTS)


def test_a_llama_cpp_only_comparison_has_zero_statistics(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    result = crossval_cache.run(
        "--candidate", "llama", "--prompt-set", "classics/two-cities", "--prompt-tokens", "24", "--max-tokens", "4",
        "--format", "json", "--report", str(report),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    document: dict[str, Any] = strict_json(result.stdout)
    summary = document["summary"]
    assert summary["n_positions"] == 28
    for name in ("mean_kl", "median_kl", "p90_kl", "p99_kl", "p999_kl", "max_kl", "mean_delta_p", "rms_delta_p"):
        assert summary[name] == 0.0, name
    assert summary["top1_agreement"] == 1.0
    assert document["reference"]["tokenization"]["prompt_set"] == "classics/two-cities"
    assert "KL statistics: mean 0, median 0, p90 0, p99 0, p99.9 0, max 0; same top-1 100.00%" in result.stderr
