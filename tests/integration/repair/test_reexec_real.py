"""bitnet_crossval.repair.reexec with real processes: exec keeps the PID, a missing or broken interpreter takes the
invoke fallback, exit codes and signals come back, the guard stops a second re-exec, and every
argument arrives as it was sent.

The command under test is tests/data/reexec/driver.py (one JSON line per incarnation in a record
file) or a real invoke task (tests/data/reexec/reexec_tasks.py). A fallback is forced the honest
way: the first incarnation runs from a throwaway venv and deletes (or corrupts) its own
interpreter before re-executing, as a venv being recreated under it would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import invoke
import pytest

from tests.helpers import HANG_SECONDS, REPO_ROOT, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(sys.platform == "win32", reason="exec() and POSIX signals"),
]

DATA = REPO_ROOT / "tests" / "data" / "reexec"
# Where this interpreter finds invoke: a venv python or a bare symlink to this interpreter may
# not see the same site-packages, so the children get it on PYTHONPATH.
INVOKE_SITE = Path(invoke.__file__).resolve().parent.parent
WAIT = HANG_SECONDS  # every child is bounded by this, for a hang

Tier = Literal["exec", "fallback"]

SPECIAL_ARGS = [
    "preflight",
    "--prompt",
    "What is 2+2?",
    "--model",
    "/path/with spaces/model.gguf",
    "'; rm -rf /; #",
    "\"double\" and 'single' quotes",
    "$(touch pwned) `uname` | cat > x & $HOME * ?",
    "naïve — 日本語 🚀",
    "",
    "new\nline",
    "-m",
    "--",
    "not-utf8-\udcff",  # the byte 0xff on the command line: passed through as bytes
]

ARG_LISTS = {
    "special": SPECIAL_ARGS,
    "thousand": [f"--arg-{i}=value {i}" for i in range(1000)],
    "none": [],
}


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    return path


@pytest.fixture
def env(base_env: dict[str, str], tmp_path: Path, bin_dir: Path) -> dict[str, str]:
    """The children's environment: nothing on PATH but what a test installs into ``bin_dir``."""
    env = dict(base_env)
    env["PATH"] = str(bin_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(INVOKE_SITE)])
    env["PYTHONIOENCODING"] = "utf-8"
    env["REEXEC_TEST_RECORD"] = str(tmp_path / "record.jsonl")
    env.pop("PYTHONUNBUFFERED", None)  # buffered stdout, as users have it: exec must flush it
    return env


@pytest.fixture
def venv_python(tmp_path: Path) -> Path:
    """The interpreter of a fresh venv, which the first incarnation may delete."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--symlinks", str(venv)],
        check=True,
        timeout=WAIT,
        capture_output=True,
    )
    python = venv / "bin" / "python"
    assert python.exists()
    return python


def install_fake_invoke(bin_dir: Path) -> Path:
    """``bin_dir/invoke``: runs ./driver.py with this (real, never deleted) interpreter."""
    target = bin_dir / "invoke"
    source = (DATA / "fake_invoke.py").read_text(encoding="utf-8")
    target.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    target.chmod(0o755)
    return target


def install_real_invoke(bin_dir: Path) -> Path:
    """``bin_dir/invoke``: what pip writes as invoke's console script, for this interpreter."""
    target = bin_dir / "invoke"
    target.write_text(
        f"#!{sys.executable}\nimport sys\nfrom invoke.main import program\nsys.exit(program.run())\n",
        encoding="utf-8",
    )
    target.chmod(0o755)
    return target


def run(argv: Sequence[str | Path], env: dict[str, str], cwd: Path = DATA) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [os.fspath(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        timeout=WAIT,
        check=False,
    )


def records(env: dict[str, str]) -> list[dict[str, Any]]:
    lines = Path(env["REEXEC_TEST_RECORD"]).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def reexec_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[reexec]")]


def prepare(tier: Tier, *, env: dict[str, str], bin_dir: Path, venv_python: Path) -> Path:
    """The interpreter to start the driver with, set up so that ``tier`` is the one taken."""
    if tier == "exec":
        return Path(sys.executable)
    install_fake_invoke(bin_dir)
    env["REEXEC_TEST_DELETE_INTERPRETER"] = str(venv_python)
    return venv_python


# --- tier 1: exec ------------------------------------------------------------------------------


def test_exec_keeps_the_pid_and_spawns_nothing(env: dict[str, str], bin_dir: Path) -> None:
    install_fake_invoke(bin_dir)  # there to be used if exec were wrongly skipped
    env.update(BITNET_DETERMINISTIC="1", BITNET_SEED="42", BITNET_GPU_LAYERS="0")
    args = ["preflight", "--backend", "llama"]

    result = run([sys.executable, "driver.py", *args], env)

    assert result.returncode == 0, result.stderr
    first, second = records(env)
    assert second["pid"] == first["pid"]
    assert [first["guard"], second["guard"]] == [False, True]
    assert second["orig_argv"] == [sys.executable, "driver.py", *args]
    assert second["argv"] == args
    assert second["cwd"] == first["cwd"] == str(DATA)
    assert second["env"] == {
        "BITNET_DETERMINISTIC": "1",
        "BITNET_SEED": "42",
        "BITNET_GPU_LAYERS": "0",
        "BITNET_REPAIR_PARENT": "1",
    }
    first_line, child_line = result.stdout.splitlines()
    assert first_line == "first incarnation: unflushed line"  # flushed before exec
    assert json.loads(child_line) == second
    assert reexec_lines(result.stderr) == [
        f"[reexec] exe: {sys.executable}",
        "[reexec] exe exists: true",
        f"[reexec] args: {[sys.executable, 'driver.py', *args]!r}",
        "[reexec] Attempting exec()...",
    ]


# --- tier 2: the invoke fallback ---------------------------------------------------------------


def test_missing_interpreter_takes_the_invoke_fallback(env: dict[str, str], bin_dir: Path, venv_python: Path) -> None:
    fake_invoke = install_fake_invoke(bin_dir)
    env["REEXEC_TEST_DELETE_INTERPRETER"] = str(venv_python)
    args = ["preflight", "--backend", "bitnet", "--repair", "auto"]

    result = run([venv_python, "driver.py", *args], env)

    assert result.returncode == 0, result.stderr
    assert not venv_python.is_symlink()
    assert not venv_python.exists()
    first, second = records(env)
    assert first["executable"] == str(venv_python)
    assert second["executable"] == sys.executable
    assert second["pid"] != first["pid"]
    assert second["ppid"] == first["pid"]
    assert second["guard"] is True
    assert second["argv"] == args
    assert second["cwd"] == str(DATA)
    assert reexec_lines(result.stderr) == [
        f"[reexec] exe: {venv_python}",
        "[reexec] exe exists: false",
        f"[reexec] args: {[str(venv_python), 'driver.py', *args]!r}",
        "[reexec] exe missing, skipping exec()",
        "[reexec] Trying invoke fallback...",
        f"[reexec] Fallback command: {[str(fake_invoke), *args]!r}",
        "[reexec] Fallback child exited with code: 0",
    ]


def test_interpreter_replaced_by_garbage_fails_exec_and_falls_back(
    env: dict[str, str], bin_dir: Path, venv_python: Path
) -> None:
    """The interpreter still exists and is executable when checked, yet exec fails (ENOEXEC):
    the race the check cannot close, caught by the fallback."""
    fake_invoke = install_fake_invoke(bin_dir)
    env["REEXEC_TEST_REPLACE_INTERPRETER"] = str(venv_python)
    env["REEXEC_TEST_EXIT"] = "42"

    result = run([venv_python, "driver.py", "x y"], env)

    assert result.returncode == 42, result.stderr
    first, second = records(env)
    assert second["pid"] != first["pid"]
    assert second["argv"] == ["x y"]
    assert reexec_lines(result.stderr)[3:] == [
        "[reexec] Attempting exec()...",
        f"[reexec] Fast path failed: [Errno 8] Exec format error: '{venv_python}' (ENOEXEC)",
        "[reexec] Trying invoke fallback...",
        f"[reexec] Fallback command: {[str(fake_invoke), 'x y']!r}",
        "[reexec] Fallback child exited with code: 42",
    ]


def test_no_fallback_left_exits_2(env: dict[str, str], venv_python: Path) -> None:
    """Interpreter gone, nothing on PATH: ReexecTargetMissing, rendered the way the task layer does."""
    env["REEXEC_TEST_DELETE_INTERPRETER"] = str(venv_python)

    result = run([venv_python, "driver.py", "x"], env)

    assert result.returncode == 2, result.stderr
    assert (
        f"error: cannot run the command again: the interpreter {venv_python} is gone "
        "and neither `invoke` nor a Python interpreter is on PATH"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(records(env)) == 1


# --- exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tier", "ending", "expected"),
    [
        ("exec", {"REEXEC_TEST_EXIT": "0"}, 0),
        ("exec", {"REEXEC_TEST_EXIT": "42"}, 42),
        # exec replaced the process, so the process the test started is the one that dies
        ("exec", {"REEXEC_TEST_SIGNAL": "SIGTERM"}, -signal.SIGTERM),
        ("fallback", {"REEXEC_TEST_EXIT": "0"}, 0),
        ("fallback", {"REEXEC_TEST_EXIT": "42"}, 42),
        ("fallback", {"REEXEC_TEST_SIGNAL": "SIGTERM"}, 128 + signal.SIGTERM),
    ],
)
def test_exit_code_propagates(
    env: dict[str, str],
    bin_dir: Path,
    venv_python: Path,
    tier: Tier,
    ending: dict[str, str],
    expected: int,
) -> None:
    python = prepare(tier, env=env, bin_dir=bin_dir, venv_python=venv_python)
    env.update(ending)

    result = run([python, "driver.py"], env)

    assert result.returncode == expected, result.stderr
    first, second = records(env)
    assert (second["pid"] == first["pid"]) is (tier == "exec")
    if tier == "fallback":
        assert reexec_lines(result.stderr)[-1] == f"[reexec] Fallback child exited with code: {expected}"


# --- the guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["exec", "fallback"])
def test_reexecuted_process_never_reexecutes_again(
    env: dict[str, str], bin_dir: Path, venv_python: Path, tier: Tier
) -> None:
    python = prepare(tier, env=env, bin_dir=bin_dir, venv_python=venv_python)

    result = run([python, "driver.py", "preflight"], env)

    assert result.returncode == 0, result.stderr
    assert [r["guard"] for r in records(env)] == [False, True]
    assert result.stderr.count("[reexec] exe:") == 1


def test_guard_set_by_the_user_means_no_reexec(env: dict[str, str]) -> None:
    env["BITNET_REPAIR_PARENT"] = "1"

    result = run([sys.executable, "driver.py", "preflight"], env)

    assert result.returncode == 0, result.stderr
    assert len(records(env)) == 1
    assert reexec_lines(result.stderr) == []


# --- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["exec", "fallback"])
@pytest.mark.parametrize("args", ARG_LISTS.values(), ids=ARG_LISTS.keys())
def test_arguments_arrive_exactly(
    env: dict[str, str], bin_dir: Path, venv_python: Path, tier: Tier, args: list[str]
) -> None:
    python = prepare(tier, env=env, bin_dir=bin_dir, venv_python=venv_python)

    result = run([python, "driver.py", *args], env)

    assert result.returncode == 0, result.stderr
    first, second = records(env)
    assert first["argv"] == args
    assert second["argv"] == args
    if tier == "exec":
        assert second["orig_argv"] == [str(python), "driver.py", *args]


# --- signals -----------------------------------------------------------------------------------


def test_sigterm_to_the_parent_reaches_the_fallback_child(
    env: dict[str, str], bin_dir: Path, venv_python: Path, tmp_path: Path
) -> None:
    python = prepare("fallback", env=env, bin_dir=bin_dir, venv_python=venv_python)
    ready, got_it = tmp_path / "ready", tmp_path / "got-sigterm"
    env.update(REEXEC_TEST_WAIT_FOR_SIGTERM="1", REEXEC_TEST_READY=str(ready), REEXEC_TEST_GOT_SIGTERM=str(got_it))

    with subprocess.Popen(
        [str(python), "driver.py"], cwd=DATA, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            wait_for(ready, WAIT, proc=proc)
            child_pid = int(ready.read_text(encoding="utf-8"))
            assert child_pid != proc.pid
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()

    assert got_it.read_text(encoding="utf-8") == str(child_pid)
    assert proc.returncode == 7, stderr.decode(errors="replace")  # the child's handler's code


# --- a real invoke task ------------------------------------------------------------------------

TASK_WORDS = ["a b", "'; rm -rf /; #", 'say "hi"', "日本語"]


def task_command(python: Path | str) -> list[str]:
    words = [arg for word in TASK_WORDS for arg in ("--word", word)]
    return [str(python), "-m", "invoke", "-r", str(DATA), "-c", "reexec_tasks", "report", *words]


def first_pid(stderr: str) -> int:
    match = re.search(r"^first incarnation pid: (\d+)$", stderr, re.MULTILINE)
    assert match, stderr
    return int(match.group(1))


def test_invoke_task_exec_keeps_the_pid(env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()

    result = run([*task_command(sys.executable), "--code", "42"], env, cwd=work)

    assert result.returncode == 42, result.stderr
    report = json.loads(result.stdout)
    assert report["pid"] == first_pid(result.stderr)
    assert report["guard"] is True
    assert report["words"] == TASK_WORDS
    assert report["cwd"] == str(work)
    assert "[reexec] Trying invoke fallback..." not in result.stderr


@pytest.mark.parametrize("found_on_path", ["invoke", "python3"])
def test_invoke_task_fallback_runs_real_invoke(
    env: dict[str, str], bin_dir: Path, venv_python: Path, tmp_path: Path, found_on_path: str
) -> None:
    """Interpreter deleted; the fallback is a real invoke: its console script on PATH, or
    ``python3 -m invoke`` with the only Python on PATH."""
    if found_on_path == "invoke":
        program = install_real_invoke(bin_dir)
        expected = [str(program), *task_command("")[3:]]
    else:
        program = bin_dir / "python3"
        program.symlink_to(sys.executable)
        expected = [str(program), *task_command("")[1:]]
    env["REEXEC_TEST_DELETE_INTERPRETER"] = str(venv_python)
    work = tmp_path / "work"
    work.mkdir()

    result = run([*task_command(venv_python), "--code", "3"], env, cwd=work)

    assert result.returncode == 3, result.stderr
    assert not venv_python.exists()
    report = json.loads(result.stdout)
    parent = first_pid(result.stderr)
    assert report["pid"] != parent
    assert report["ppid"] == parent
    assert report["guard"] is True
    assert report["words"] == TASK_WORDS
    assert report["cwd"] == str(work)
    assert reexec_lines(result.stderr)[-3:] == [
        "[reexec] Trying invoke fallback...",
        f"[reexec] Fallback command: {[*expected, '--code', '3']!r}",
        "[reexec] Fallback child exited with code: 3",
    ]
