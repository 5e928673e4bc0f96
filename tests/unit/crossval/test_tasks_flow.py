"""The ``crossval-per-token`` and ``crossval-selfcheck`` tasks end to end, in this process, on the
fake reference shim: their exit codes and their one JSON document.

The preflight is replaced: a real one detects a llama.cpp install (its libraries, its headers,
a load check) before it trusts the constants file, and there is none here. The tests replace
``bitnet_crossval.repair.preflight.preflight_for`` (the task bodies import it when they run)
with a recorder, so everything after the preflight is the real task.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from bitnet_crossval.crossval import selfcheck
from bitnet_crossval.crossval.engine import Engine, TraceSite
from bitnet_crossval.repair import preflight
from bitnet_crossval.store.layout import CACHE_ENV
from bitnet_crossval.tasks import _runner
from bitnet_crossval.tasks.crossval import crossval_per_token
from bitnet_crossval.tasks.selfcheck import crossval_selfcheck
from tests.unit.crossval import fake_shim
from tests.unit.crossval.fake_reference import FakeCache

pytestmark = pytest.mark.usefixtures("one_blas_thread_here")


@dataclass(frozen=True)
class TaskRun:
    code: int
    document: dict[str, Any]
    err: str
    preflights: list[tuple[str, str | None]]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def strict_json(text: str) -> Any:
    """Exactly one JSON document (trailing data fails), without NaN or Infinity."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"stdout holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


RunTask = Callable[..., TaskRun]


@pytest.fixture
def run_task(fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> RunTask:
    """``run_task(task, **flags)``: the task as invoke calls it, with this process's environment
    pointing at the fake cache, a fresh task context, and the preflight replaced."""
    for name in list(os.environ):
        if name.startswith(("BITNET_", "LLAMA_CPP_", "FAKE_SHIM_")):
            monkeypatch.delenv(name)
    for name, value in fake_cache.env().items():
        if name.startswith(("BITNET_", "FAKE_SHIM_")):
            monkeypatch.setenv(name, value)
    assert os.environ[CACHE_ENV] == str(fake_cache.root)
    monkeypatch.setattr(_runner, "_context", None)
    preflights: list[tuple[str, str | None]] = []

    def recorded_preflight(ctx: Any, backend: str, repair: str | None) -> None:
        assert ctx.cache.root == fake_cache.root
        preflights.append((backend, repair))

    monkeypatch.setattr(preflight, "preflight_for", recorded_preflight)

    def run(task: Any, **flags: Any) -> TaskRun:
        capsys.readouterr()
        code = 0
        try:
            task(Context(), format="json", repair="never", **flags)
        except Exit as exc:
            code = int(exc.code)
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err[-3000:]
        return TaskRun(code=code, document=strict_json(out), err=err, preflights=list(preflights))

    return run


SMALL = {"prompt": "The quick brown fox", "max_tokens": "4"}


def test_parity_is_exit_0_with_the_report_as_the_one_document(run_task: RunTask) -> None:
    run = run_task(crossval_per_token, model="synthetic:llama", **SMALL)

    assert run.code == 0 and run.error_lines == []
    assert run.preflights == [("llama", "never")]
    assert run.document["schema"] == "bitnet-crossval/report"
    assert run.document["verdict"] == "parity" and run.document["passed"] is True
    assert run.document["reference"]["shim"].endswith("bitnet-shim")


def test_divergence_is_exit_10_with_the_report_and_one_error_line(run_task: RunTask) -> None:
    run = run_task(crossval_per_token, model="synthetic:gemma3", candidate="numpy:missing_qk_norm", trace=True, **SMALL)

    assert run.code == 10
    assert run.document["verdict"] == "divergence" and run.document["passed"] is False
    assert run.document["trace"]["first_departure"]["name"] == "Qcur_normed-0"
    assert len(run.error_lines) == 1 and run.error_lines[0].startswith("error: parity failed: ")
    assert "Qcur_normed-0" in run.error_lines[0]
    assert "next: look at how the candidate computes Qcur_normed-0" in run.err


def failing_candidate(model: str, tokens: Any) -> Any:
    raise RuntimeError("the candidate's own bug")


@pytest.mark.parametrize(
    ("flags", "code", "error_type", "fragment"),
    [
        ({"candidate": f"py:{__name__}:failing_candidate"}, 11, "CandidateFailed", "RuntimeError"),
        ({"tokens_file": "ids"}, 6, "BadInput", "outside the model's vocabulary"),
        ({"max_tokens": "lots"}, 6, "BadInput", "--max-tokens 'lots'"),
        ({"env": "tokenize:exit3"}, 6, "BadInput", "the model cannot be loaded: "),
        ({"env": "generate:signal9"}, 1, "UnclassifiedError", "was killed by signal 9"),
    ],
    ids=["candidate-fails", "bad-token-ids", "bad-option", "reference-exit-3", "reference-killed"],
)
def test_a_failure_is_its_exit_code_and_one_error_document(
    run_task: RunTask,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flags: dict[str, str],
    code: int,
    error_type: str,
    fragment: str,
) -> None:
    flags = {"model": "synthetic:llama", **SMALL, **flags}
    if flags.get("tokens_file") == "ids":
        (tmp_path / "ids.txt").write_text("1 5 99999\n", encoding="utf-8")
        flags["tokens_file"] = str(tmp_path / "ids.txt")
        del flags["prompt"]
    if "env" in flags:
        monkeypatch.setenv(fake_shim.MISBEHAVE_ENV, flags.pop("env"))

    run = run_task(crossval_per_token, **flags)

    assert run.code == code
    # the runner's one error shape, with the command's own field (the verdict)
    assert set(run.document) == {"command", "ok", "verdict", "error"}
    assert run.document["command"] == "crossval-per-token" and run.document["ok"] is False
    assert run.document["verdict"] == "error"
    error = run.document["error"]
    assert set(error) == {"type", "message", "next_step", "exit_code", "log"}
    assert (error["type"], error["exit_code"]) == (error_type, code)
    assert fragment in error["message"] and error["next_step"]
    assert run.error_lines == [f"error: {error['message']}"]
    # a bad option is refused before anything runs, the preflight included
    assert run.preflights == ([] if "max_tokens" in flags and flags["max_tokens"] == "lots" else [("llama", "never")])


def test_the_selfcheck_is_exit_0_when_every_case_is_caught_and_located(
    run_task: RunTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selfcheck, "cases_for", lambda arch: [None, "norm_eps"])

    run = run_task(crossval_selfcheck, arch="llama", candidate="numpy")

    assert run.code == 0 and run.error_lines == []
    assert run.preflights == [("llama", "never")]
    assert set(run.document) == {"command", "ok", "cases"}
    assert run.document["command"] == "crossval-selfcheck" and run.document["ok"] is True
    cases = run.document["cases"]
    assert [(c["architecture"], c["fault"], c["ok"]) for c in cases] == [
        ("llama", None, True),
        ("llama", "norm_eps", True),
    ]
    assert cases[1]["found_site"] == cases[1]["expected_site"] == "attn_norm-0"


def test_the_selfcheck_is_exit_12_when_a_fault_is_not_where_it_was_expected(
    run_task: RunTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selfcheck, "cases_for", lambda arch: ["norm_eps"])
    monkeypatch.setattr(Engine, "fault_site", lambda self: TraceSite("ffn_out", 0))

    run = run_task(crossval_selfcheck, arch="llama", candidate="numpy")

    assert run.code == 12
    assert run.document["ok"] is False
    (broken,) = run.document["cases"]
    assert broken["caught"] is True and broken["located"] is False
    assert (broken["expected_site"], broken["found_site"]) == ("ffn_out-0", "attn_norm-0")
    assert run.error_lines == [
        "error: the self-check failed: 1 of 1 cases were not caught or not located (llama/norm_eps)"
    ]
    assert "next: read the self-check table above" in run.err


def test_the_selfcheck_of_hf_without_its_extra_is_bad_input_before_anything_runs(
    run_task: RunTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitnet_crossval.crossval.hf import availability

    monkeypatch.setattr(availability, "missing_requirement", lambda: "the hf candidate needs torch")

    run = run_task(crossval_selfcheck, arch="llama", candidate="hf")

    assert run.code == 6 and run.preflights == []
    assert run.error_lines == ["error: the hf candidate needs torch"]
    assert "pip install 'bitnet-crossval-suite[hf]'" in run.document["error"]["next_step"]
