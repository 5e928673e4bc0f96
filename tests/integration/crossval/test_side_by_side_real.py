"""The model as given and its float copy evaluated side by side, against the real llama.cpp.

- the report is the same, to the last bit, whether the two evaluations ran at once (two cores)
  or one after the other (the run held to one core by its affinity, or told `--cores 1`);
- they do run at once: with the model's shim frozen (SIGSTOP), the float copy's shim still
  starts, which it could not if it waited for the other;
- stopped (SIGTERM) while both shims are there, frozen, the run exits 143 and takes both shims
  and its temporary files with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.util.machine import usable_cores
from tests.helpers import REPO_ROOT
from tests.integration.crossval.conftest import CrossvalCache, strict_json
from tests.integration.crossval.test_candidate_hardening import alive, gone_soon

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MODEL = "synthetic:llama:Q4_0"
# 498 positions of the synthetic model's 512: each shim runs long enough (tenths of a second) to be seen.
ARGS = ("--model", MODEL, "--prompt-set", "classics/moby-dick", "--prompt-tokens", "490", "--max-tokens", "8")
ONE_CORE = (
    "import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    "os.execv(sys.executable, [sys.executable, '-m', 'invoke', *sys.argv[1:]])"
)
WAIT = 240.0  # seconds to wait for a shim to appear: never reached when the code is right

needs_two_cores = pytest.mark.skipif(usable_cores() < 2, reason="side by side needs two cores; this run has one")


# numpy's BLAS on one thread in every run: the NumPy candidate's sums then do not depend on the
# cores a run may use (OpenBLAS starts a thread per core of the affinity mask), and its logits
# are the same in every run, so that only the references' side could tell the runs apart.
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _crossval(cache: CrossvalCache, *extra: str, one_core: bool = False) -> dict[str, Any]:
    argv = [sys.executable, "-c", ONE_CORE] if one_core else [sys.executable, "-m", "invoke"]
    argv += ["crossval-per-token", "--repair", "never", *ARGS, *extra, "--format", "json"]
    env = {**cache.env, **ONE_BLAS_THREAD}
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = strict_json(done.stdout)
    return document


@needs_two_cores
def test_side_by_side_and_one_after_the_other_give_the_same_report(crossval_cache: CrossvalCache) -> None:
    together = _crossval(crossval_cache)
    alone = _crossval(crossval_cache, one_core=True)
    told = _crossval(crossval_cache, "--cores", "1")  # as a suite tells each of its cases at once
    assert together["reference"]["float_copy"]["evaluated_side_by_side"] is True
    assert alone["reference"]["float_copy"]["evaluated_side_by_side"] is False
    assert told["reference"]["float_copy"]["evaluated_side_by_side"] is False
    assert "candidate_prepare" in together["timings"]  # the engine dequantised during the generation
    assert "candidate_prepare" not in alone["timings"] and "candidate_prepare" not in told["timings"]
    assert together["verdict"] == alone["verdict"] == told["verdict"] == "parity"
    assert together["tokens"] == alone["tokens"] == told["tokens"]
    # Every figure of every position, and the reference choice (its KL to each reference and the
    # noise between them): equal as JSON, so equal to the last bit. Compared as one boolean each:
    # pytest's diff of two long JSON texts would take hours.
    for name, other in (("one core", alone), ("--cores 1", told)):
        for key in ("followed", "distances", "kl_by_reference", "noise"):
            same = together["references"][key] == other["references"][key]
            assert same, f"references.{key} differs between two cores and {name}"
        same_rows = json.dumps(together["rows"]) == json.dumps(other["rows"])
        assert same_rows, f"the rows differ between two cores and {name}"


def _children(pid: int) -> dict[int, str]:
    """The live children of ``pid`` and their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and alive(int(entry.name)):
            found[int(entry.name)] = cmdline
    return found


def _shim_evaluating(pid: int, *, float_copy: bool, proc: subprocess.Popen[str]) -> int | None:
    """The pid of the run's shim evaluating the model as given (or its float copy), once it
    runs; None when the run ended first (it was too quick to be seen)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        for child, cmdline in _children(pid).items():
            if "bitnet-shim logits" in cmdline and ("float-copies" in cmdline) == float_copy:
                return child
        time.sleep(0.005)
    raise AssertionError(f"no shim evaluating {'the float copy' if float_copy else 'the model'} within {WAIT:g}s")


ATTEMPTS = 5
"""Runs tried until one is seen with the model's shim running: a /proc scan on a loaded machine
can miss a shim that lives a few tenths of a second."""


@needs_two_cores
def test_the_copys_shim_starts_while_the_models_is_frozen_and_both_go_when_the_run_is_stopped(
    crossval_cache: CrossvalCache, tmp_path: Path
) -> None:
    for attempt in range(ATTEMPTS):
        temp = tmp_path / f"tmp-{attempt}"  # the run's temporary directories go here, and must not stay
        temp.mkdir()
        run = subprocess.Popen(
            [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never", *ARGS],
            cwd=REPO_ROOT,
            env={**crossval_cache.env, **ONE_BLAS_THREAD, "TMPDIR": str(temp)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        shims: list[int] = []
        try:
            native = _shim_evaluating(run.pid, float_copy=False, proc=run)
            if native is None:
                run.communicate(timeout=120)
                continue
            os.kill(native, signal.SIGSTOP)
            shims.append(native)
            copy = _shim_evaluating(run.pid, float_copy=True, proc=run)  # starts although the other cannot end
            assert copy is not None, f"the run ended (code {run.returncode}) with the model's shim frozen"
            os.kill(copy, signal.SIGSTOP)
            shims.append(copy)
            run.send_signal(signal.SIGTERM)
            _out, err = run.communicate(timeout=120)
        finally:
            for pid in shims:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            if run.poll() is None:
                run.kill()
                run.wait()
        assert run.returncode == 143, err[-3000:]
        assert "Traceback" not in err
        for pid in shims:
            assert gone_soon(pid), f"the shim (pid {pid}) outlived the run"
        assert list(temp.iterdir()) == [], "temporary files outlived the run"
        return
    pytest.fail(f"in {ATTEMPTS} runs the model's shim was never seen running")
