"""bitnet_crossval.repair.reexec without real processes: the plan, the choice of tier, the fallback command and the
diagnostic lines. A fake ``execve`` records what it was given and raises SystemExit in place of
replacing the process (nox ``tests/test__cli.py`` does the same)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from bitnet_crossval.errors import ProgramNotFound, ReexecTargetMissing
from bitnet_crossval.repair.guard import REPAIR_PARENT_ENV, is_repair_child
from bitnet_crossval.repair.reexec import (
    ReexecPlan,
    exec_skip_reason,
    fallback_command,
    plan_reexec,
    reexec_current_command,
    script_of,
)
from bitnet_crossval.util import ui

SPECIAL_ARGS = [
    "--prompt",
    "What is 2+2?",
    "--model",
    "/path/with spaces/model.gguf",
    "'; rm -rf /; #",
    "\"double\" and 'single' quotes",
    "$(touch /tmp/pwned) `uname` | cat > x & $HOME *",
    "naïve — 日本語 🚀",
    "",
    "trailing\\",
    "new\nline",
]

ARG_LISTS = {
    "special": SPECIAL_ARGS,
    "thousand": [f"--arg-{i}={i} x" for i in range(1000)],
    "none": [],
}


def executable_file(path: Path, *, mode: int = 0o755) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(mode)
    return str(path)


@pytest.fixture
def interpreter(tmp_path: Path) -> str:
    return executable_file(tmp_path / "venv" / "bin" / "python")


@pytest.fixture
def invoke_script(tmp_path: Path) -> str:
    return executable_file(tmp_path / "venv" / "bin" / "invoke")


def make_plan(
    executable: str,
    orig_argv: Sequence[str],
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    env_updates: Mapping[str, str] | None = None,
) -> ReexecPlan:
    return plan_reexec(
        env_updates=env_updates or {},
        environ={"PATH": "/nowhere"} if environ is None else environ,
        executable=executable,
        orig_argv=orig_argv,
        argv=argv,
    )


class ExecCalled(SystemExit):
    """Raised by the fake execve: the process would have been replaced here."""


class FakeExec:
    def __init__(self, error: OSError | None = None) -> None:
        self.error = error
        self.calls: list[tuple[str, list[str], dict[str, str]]] = []

    def __call__(self, path: str, argv: list[str], env: Mapping[str, str]) -> NoReturn:
        self.calls.append((path, list(argv), dict(env)))
        if self.error is not None:
            raise self.error
        raise ExecCalled(0)


class FakeForeground:
    def __init__(self, code: int = 0, error: Exception | None = None) -> None:
        self.code = code
        self.error = error
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
        self.calls.append((list(argv), dict(env or {})))
        if self.error is not None:
            raise self.error
        return self.code


def fake_which(found: Mapping[str, str], seen_paths: list[str | None] | None = None) -> Any:
    def which(cmd: str, mode: int = os.F_OK | os.X_OK, path: str | None = None) -> str | None:
        if seen_paths is not None:
            seen_paths.append(path)
        return found.get(cmd)

    return which


# --- the guard ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({REPAIR_PARENT_ENV: "1"}, True),
        ({REPAIR_PARENT_ENV: "0"}, False),
        ({REPAIR_PARENT_ENV: ""}, False),
        ({REPAIR_PARENT_ENV: "true"}, False),
        ({}, False),
    ],
)
def test_is_repair_child_only_for_exactly_1(environ: dict[str, str], expected: bool) -> None:
    assert is_repair_child(environ) is expected


# --- the plan ----------------------------------------------------------------------------------


def test_plan_for_an_invoke_console_script() -> None:
    plan = make_plan(
        "/venv/bin/python3.11",
        ["/venv/bin/python3.11", "/venv/bin/invoke", "preflight", "--backend", "llama"],
        ["/venv/bin/invoke", "preflight", "--backend", "llama"],
    )
    assert plan.exec_argv == ("/venv/bin/python3.11", "/venv/bin/invoke", "preflight", "--backend", "llama")
    assert plan.script == "/venv/bin/invoke"
    assert plan.task_args == ("preflight", "--backend", "llama")


def test_plan_for_python_dash_m_invoke_uses_the_absolute_interpreter() -> None:
    plan = make_plan(
        "/usr/bin/python3",
        ["python3", "-m", "invoke", "preflight", "--repair", "auto"],
        ["/usr/lib/python3/site-packages/invoke/__main__.py", "preflight", "--repair", "auto"],
    )
    assert plan.exec_argv == ("/usr/bin/python3", "-m", "invoke", "preflight", "--repair", "auto")
    assert plan.script is None
    assert plan.task_args == ("preflight", "--repair", "auto")


def test_plan_keeps_interpreter_options() -> None:
    plan = make_plan("/py", ["python", "-X", "dev", "-u", "-m", "invoke", "x"], ["m", "x"])
    assert plan.exec_argv == ("/py", "-X", "dev", "-u", "-m", "invoke", "x")


def test_plan_sets_the_guard_and_passes_everything_else_through() -> None:
    environ = {
        "PATH": "/usr/bin",
        "BITNET_DETERMINISTIC": "1",
        "BITNET_SEED": "42",
        "BITNET_GPU_LAYERS": "0",
        "HOME": "/home/u",
    }
    plan = make_plan("/py", ["py", "-m", "invoke"], ["m"], environ=environ, env_updates={"LD_LIBRARY_PATH": "/lib/x"})
    assert dict(plan.child_env) == {**environ, "LD_LIBRARY_PATH": "/lib/x", REPAIR_PARENT_ENV: "1"}
    assert REPAIR_PARENT_ENV not in environ  # the caller's mapping is untouched


def test_plan_guard_cannot_be_switched_off_by_an_update() -> None:
    plan = make_plan("/py", ["py", "-m", "invoke"], ["m"], env_updates={REPAIR_PARENT_ENV: "0"})
    assert plan.child_env[REPAIR_PARENT_ENV] == "1"


def test_plan_environment_is_read_only() -> None:
    plan = make_plan("/py", ["py", "-m", "invoke"], ["m"])
    with pytest.raises(TypeError):
        plan.child_env["X"] = "1"  # type: ignore[index]


@pytest.mark.parametrize("args", ARG_LISTS.values(), ids=ARG_LISTS.keys())
def test_plan_preserves_arguments_exactly(args: list[str]) -> None:
    plan = make_plan("/py", ["python", "-m", "invoke", *args], ["/x/__main__.py", *args])
    assert list(plan.exec_argv) == ["/py", "-m", "invoke", *args]
    assert list(plan.task_args) == args


@pytest.mark.parametrize(
    ("orig_argv", "script"),
    [
        (["python", "tasks_main.py", "a"], "tasks_main.py"),
        (["python", "-u", "s.py"], "s.py"),
        (["python", "-uB", "s.py", "-m"], "s.py"),
        (["python", "-X", "dev", "s.py"], "s.py"),
        (["python", "-uX", "dev", "s.py"], "s.py"),
        (["python", "-Xdev", "s.py"], "s.py"),
        (["python", "-W", "ignore", "s.py"], "s.py"),
        (["python", "-Wignore", "s.py"], "s.py"),
        (["python", "--check-hash-based-pycs", "always", "s.py"], "s.py"),
        (["python", "--", "-odd-name.py"], "-odd-name.py"),
        (["python", "-m", "invoke", "x.py"], None),
        (["python", "-Bm", "invoke"], None),
        (["python", "-c", "print(1)", "s.py"], None),
        (["python", "-"], None),
        (["python"], None),
        ([], None),
    ],
)
def test_script_of(orig_argv: list[str], script: str | None) -> None:
    assert script_of(orig_argv) == script


# --- whether exec is attempted -----------------------------------------------------------------


def test_exec_is_attempted_when_interpreter_and_script_exist(interpreter: str, invoke_script: str) -> None:
    plan = make_plan(interpreter, [interpreter, invoke_script, "x"], [invoke_script, "x"])
    assert exec_skip_reason(plan, platform="linux") is None


def test_exec_skipped_when_interpreter_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone" / "python")
    plan = make_plan(missing, [missing, "-m", "invoke"], ["m"])
    assert exec_skip_reason(plan, platform="linux") == "exe missing, skipping exec()"


def test_exec_skipped_when_interpreter_not_executable(tmp_path: Path) -> None:
    plain = executable_file(tmp_path / "python", mode=stat.S_IRUSR | stat.S_IWUSR)
    plan = make_plan(plain, [plain, "-m", "invoke"], ["m"])
    assert exec_skip_reason(plan, platform="linux") == "exe not executable, skipping exec()"


def test_exec_skipped_when_script_missing(interpreter: str, tmp_path: Path) -> None:
    script = str(tmp_path / "bin" / "invoke")
    plan = make_plan(interpreter, [interpreter, script, "x"], [script, "x"])
    assert exec_skip_reason(plan, platform="linux") == f"script missing: {script}, skipping exec()"


def test_exec_skipped_when_command_line_unknown(interpreter: str) -> None:
    plan = make_plan(interpreter, [], ["m"])
    assert exec_skip_reason(plan, platform="linux") == "original command line unknown, skipping exec()"


def test_exec_never_on_windows(interpreter: str) -> None:
    plan = make_plan(interpreter, [interpreter, "-m", "invoke"], ["m"])
    assert exec_skip_reason(plan, platform="win32") == "no exec() on Windows, skipping it"


# --- the fallback command ----------------------------------------------------------------------


def test_fallback_prefers_invoke_on_the_childs_path(interpreter: str) -> None:
    seen: list[str | None] = []
    plan = make_plan(
        interpreter,
        [interpreter, "-m", "invoke", "preflight"],
        ["m", "preflight", "--backend", "bitnet"],
        environ={"PATH": "/parent/bin"},
        env_updates={"PATH": "/child/bin"},
    )
    which = fake_which({"invoke": "/child/bin/invoke", "python3": "/child/bin/python3"}, seen)
    assert fallback_command(plan, which=which) == ["/child/bin/invoke", "preflight", "--backend", "bitnet"]
    assert seen == ["/child/bin"]


def test_fallback_uses_the_interpreter_with_dash_m_when_invoke_not_on_path(interpreter: str) -> None:
    plan = make_plan(interpreter, [interpreter, "-m", "invoke", "x"], ["m", "x", "y z"])
    which = fake_which({"python3": "/usr/bin/python3"})
    assert fallback_command(plan, which=which) == [interpreter, "-m", "invoke", "x", "y z"]


def test_fallback_skips_an_interpreter_exec_just_failed_on(interpreter: str) -> None:
    plan = make_plan(interpreter, [interpreter, "-m", "invoke", "x"], ["m", "x"])
    which = fake_which({"python3": "/usr/bin/python3"})
    assert fallback_command(plan, interpreter_failed=True, which=which) == [
        "/usr/bin/python3",
        "-m",
        "invoke",
        "x",
    ]


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ({"python3": "/usr/bin/python3", "python": "/usr/bin/python"}, "/usr/bin/python3"),
        ({"python": "/usr/bin/python"}, "/usr/bin/python"),
    ],
)
def test_fallback_finds_a_python_on_path_when_the_interpreter_is_gone(
    tmp_path: Path, found: dict[str, str], expected: str
) -> None:
    missing = str(tmp_path / "gone" / "python")
    plan = make_plan(missing, [missing, "-m", "invoke", "x"], ["m", "x"])
    assert fallback_command(plan, which=fake_which(found)) == [expected, "-m", "invoke", "x"]


def test_fallback_impossible_raises_target_missing(tmp_path: Path) -> None:
    missing = str(tmp_path / "gone" / "python")
    plan = make_plan(missing, [missing, "-m", "invoke", "x"], ["m", "x"])
    with pytest.raises(ReexecTargetMissing) as caught:
        fallback_command(plan, which=fake_which({}))
    assert caught.value.exit_code == 2
    assert missing in caught.value.message
    assert "`invoke`" in caught.value.message
    assert "is gone" in caught.value.message


def test_fallback_impossible_after_exec_failed_says_the_interpreter_cannot_run(interpreter: str) -> None:
    plan = make_plan(interpreter, [interpreter, "-m", "invoke", "x"], ["m", "x"])
    with pytest.raises(ReexecTargetMissing) as caught:
        fallback_command(plan, interpreter_failed=True, which=fake_which({}))
    assert f"the interpreter {interpreter} cannot be run and neither" in caught.value.message


# --- reexec_current_command --------------------------------------------------------------------


def run_reexec(
    capsys: pytest.CaptureFixture[str],
    *,
    executable: str,
    orig_argv: Sequence[str],
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
    env_updates: Mapping[str, str] | None = None,
    platform: str = "linux",
    execve: FakeExec | None = None,
    foreground: FakeForeground | None = None,
    found: Mapping[str, str] | None = None,
) -> tuple[SystemExit, list[str]]:
    with pytest.raises(SystemExit) as caught:
        reexec_current_command(
            env_updates=env_updates,
            environ={"PATH": "/bin"} if environ is None else environ,
            executable=executable,
            orig_argv=orig_argv,
            argv=argv,
            platform=platform,
            execve=execve or FakeExec(),
            which=fake_which(found or {}),
            run_foreground=foreground or FakeForeground(),
        )
    captured = capsys.readouterr()
    assert captured.out == ""
    return caught.value, captured.err.splitlines()


def test_fast_path_execs_interpreter_with_original_argv_and_guard(
    capsys: pytest.CaptureFixture[str], interpreter: str, invoke_script: str
) -> None:
    execve = FakeExec()
    foreground = FakeForeground()
    environ = {"PATH": "/bin", "BITNET_DETERMINISTIC": "1", "BITNET_SEED": "42", "BITNET_GPU_LAYERS": "8"}
    orig = [interpreter, invoke_script, "preflight", "--backend", "llama", "--repair", "auto"]
    exit_, lines = run_reexec(
        capsys,
        executable=interpreter,
        orig_argv=orig,
        argv=orig[1:],
        environ=environ,
        env_updates={"LD_LIBRARY_PATH": "/cache/llama/lib"},
        execve=execve,
        foreground=foreground,
    )
    assert isinstance(exit_, ExecCalled)
    assert execve.calls == [
        (interpreter, orig, {**environ, "LD_LIBRARY_PATH": "/cache/llama/lib", REPAIR_PARENT_ENV: "1"})
    ]
    assert foreground.calls == []
    assert lines == [
        f"[reexec] exe: {interpreter}",
        "[reexec] exe exists: true",
        f"[reexec] args: {orig!r}",
        "[reexec] Attempting exec()...",
    ]


def test_fast_path_flushes_output_before_exec(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], interpreter: str
) -> None:
    events: list[str] = []
    monkeypatch.setattr(ui, "flush_all", lambda: events.append("flush"))

    class RecordingExec(FakeExec):
        def __call__(self, path: str, argv: list[str], env: Mapping[str, str]) -> NoReturn:
            events.append("exec")
            super().__call__(path, argv, env)

    run_reexec(
        capsys,
        executable=interpreter,
        orig_argv=[interpreter, "-m", "invoke"],
        argv=["m"],
        execve=RecordingExec(),
    )
    assert events == ["flush", "exec"]


@pytest.mark.parametrize("args", ARG_LISTS.values(), ids=ARG_LISTS.keys())
def test_arguments_reach_both_tiers_exactly(
    capsys: pytest.CaptureFixture[str], interpreter: str, args: list[str]
) -> None:
    orig = [interpreter, "-m", "invoke", *args]
    execve = FakeExec()
    run_reexec(capsys, executable=interpreter, orig_argv=orig, argv=["m", *args], execve=execve)
    assert execve.calls[0][1] == orig

    foreground = FakeForeground()
    run_reexec(
        capsys,
        executable=interpreter,
        orig_argv=orig,
        argv=["m", *args],
        platform="win32",
        foreground=foreground,
        found={"invoke": "/bin/invoke"},
    )
    assert foreground.calls[0][0] == ["/bin/invoke", *args]


@pytest.mark.parametrize(
    ("code", "name"),
    [(errno.ENOENT, "ENOENT"), (errno.EACCES, "EACCES"), (errno.ENOEXEC, "ENOEXEC")],
)
def test_exec_failure_takes_the_fallback(
    capsys: pytest.CaptureFixture[str], interpreter: str, code: int, name: str
) -> None:
    error = OSError(code, os.strerror(code), interpreter)
    execve = FakeExec(error)
    foreground = FakeForeground(code=0)
    orig = [interpreter, "-m", "invoke", "preflight", "--backend", "bitnet"]
    exit_, lines = run_reexec(
        capsys,
        executable=interpreter,
        orig_argv=orig,
        argv=["m", "preflight", "--backend", "bitnet"],
        environ={"PATH": "/bin", "BITNET_SEED": "7"},
        execve=execve,
        foreground=foreground,
        found={"python3": "/usr/bin/python3"},
    )
    assert not isinstance(exit_, ExecCalled)
    assert exit_.code == 0
    assert len(execve.calls) == 1
    # exec just failed on the interpreter, so the fallback does not try it again
    command = ["/usr/bin/python3", "-m", "invoke", "preflight", "--backend", "bitnet"]
    assert foreground.calls == [(command, {"PATH": "/bin", "BITNET_SEED": "7", REPAIR_PARENT_ENV: "1"})]
    assert lines == [
        f"[reexec] exe: {interpreter}",
        "[reexec] exe exists: true",
        f"[reexec] args: {orig!r}",
        "[reexec] Attempting exec()...",
        f"[reexec] Fast path failed: [Errno {code}] {os.strerror(code)}: '{interpreter}' ({name})",
        "[reexec] Trying invoke fallback...",
        f"[reexec] Fallback command: {command!r}",
        "[reexec] Fallback child exited with code: 0",
    ]


def test_missing_interpreter_skips_exec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "venv" / "bin" / "python")
    execve = FakeExec()
    foreground = FakeForeground(code=0)
    orig = [missing, str(tmp_path / "venv" / "bin" / "invoke"), "preflight"]
    exit_, lines = run_reexec(
        capsys,
        executable=missing,
        orig_argv=orig,
        argv=orig[1:],
        execve=execve,
        foreground=foreground,
        found={"invoke": "/usr/local/bin/invoke"},
    )
    assert execve.calls == []
    assert exit_.code == 0
    assert foreground.calls[0][0] == ["/usr/local/bin/invoke", "preflight"]
    assert lines == [
        f"[reexec] exe: {missing}",
        "[reexec] exe exists: false",
        f"[reexec] args: {orig!r}",
        "[reexec] exe missing, skipping exec()",
        "[reexec] Trying invoke fallback...",
        "[reexec] Fallback command: ['/usr/local/bin/invoke', 'preflight']",
        "[reexec] Fallback child exited with code: 0",
    ]


def test_missing_script_skips_exec(capsys: pytest.CaptureFixture[str], interpreter: str, tmp_path: Path) -> None:
    script = str(tmp_path / "deleted" / "invoke")
    execve = FakeExec()
    foreground = FakeForeground()
    _, lines = run_reexec(
        capsys,
        executable=interpreter,
        orig_argv=[interpreter, script, "x"],
        argv=[script, "x"],
        execve=execve,
        foreground=foreground,
    )
    assert execve.calls == []
    assert foreground.calls[0][0] == [interpreter, "-m", "invoke", "x"]
    assert f"[reexec] script missing: {script}, skipping exec()" in lines


def test_windows_always_spawns(capsys: pytest.CaptureFixture[str], interpreter: str) -> None:
    execve = FakeExec()
    foreground = FakeForeground(code=3)
    exit_, lines = run_reexec(
        capsys,
        executable=interpreter,
        orig_argv=[interpreter, "-m", "invoke", "preflight"],
        argv=["m", "preflight"],
        platform="win32",
        execve=execve,
        foreground=foreground,
    )
    assert execve.calls == []
    assert exit_.code == 3
    assert foreground.calls[0][0] == [interpreter, "-m", "invoke", "preflight"]
    assert foreground.calls[0][1][REPAIR_PARENT_ENV] == "1"
    assert "[reexec] no exec() on Windows, skipping it" in lines
    assert "[reexec] Attempting exec()..." not in lines


@pytest.mark.parametrize("code", [0, 1, 42, 130, 143])
def test_fallback_exit_code_becomes_ours(capsys: pytest.CaptureFixture[str], tmp_path: Path, code: int) -> None:
    missing = str(tmp_path / "python")
    exit_, lines = run_reexec(
        capsys,
        executable=missing,
        orig_argv=[missing, "-m", "invoke"],
        argv=["m"],
        foreground=FakeForeground(code=code),
        found={"invoke": "/bin/invoke"},
    )
    assert exit_.code == code
    assert lines[-1] == f"[reexec] Fallback child exited with code: {code}"


def test_nothing_to_run_raises_target_missing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "python")
    foreground = FakeForeground()
    with pytest.raises(ReexecTargetMissing) as caught:
        reexec_current_command(
            environ={"PATH": str(tmp_path)},
            executable=missing,
            orig_argv=[missing, "-m", "invoke", "x"],
            argv=["m", "x"],
            platform="linux",
            execve=FakeExec(),
            which=fake_which({}),
            run_foreground=foreground,
        )
    assert caught.value.exit_code == 2
    assert foreground.calls == []
    assert capsys.readouterr().err.splitlines()[-1] == "[reexec] Trying invoke fallback..."


@pytest.mark.parametrize(
    "error",
    [ProgramNotFound("/bin/invoke"), FileNotFoundError(errno.ENOENT, "No such file or directory")],
    ids=["program-not-found", "enoent"],
)
def test_fallback_target_vanishing_raises_target_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, error: Exception
) -> None:
    missing = str(tmp_path / "python")
    with pytest.raises(ReexecTargetMissing) as caught:
        reexec_current_command(
            environ={"PATH": "/bin"},
            executable=missing,
            orig_argv=[missing, "-m", "invoke", "x"],
            argv=["m", "x"],
            platform="linux",
            execve=FakeExec(),
            which=fake_which({"invoke": "/bin/invoke"}),
            run_foreground=FakeForeground(error=error),
        )
    assert caught.value.exit_code == 2
    assert "/bin/invoke" in caught.value.message
    assert isinstance(caught.value.__cause__, type(error))
    capsys.readouterr()


def test_defaults_come_from_sys_and_os(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], interpreter: str
) -> None:
    monkeypatch.setattr("sys.executable", interpreter)
    monkeypatch.setattr("sys.orig_argv", ["python3", "-m", "invoke", "preflight", "--backend", "llama"])
    monkeypatch.setattr("sys.argv", ["/site/invoke/__main__.py", "preflight", "--backend", "llama"])
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("BITNET_GPU_LAYERS", "12")
    monkeypatch.delenv(REPAIR_PARENT_ENV, raising=False)
    execve = FakeExec()
    with pytest.raises(ExecCalled):
        reexec_current_command(execve=execve)
    path, argv, env = execve.calls[0]
    assert path == interpreter
    assert argv == [interpreter, "-m", "invoke", "preflight", "--backend", "llama"]
    assert env == {**os.environ, REPAIR_PARENT_ENV: "1"}
    assert env["BITNET_GPU_LAYERS"] == "12"
    assert REPAIR_PARENT_ENV not in os.environ
    capsys.readouterr()
