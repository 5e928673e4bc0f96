"""Run the current command again in a fresh process, with the repair guard set.

After a repair installs a backend and rewrites the constants file, the running process still
holds the old constants and a dynamic loader that read ``LD_LIBRARY_PATH`` when it started;
only a new process sees the new state. Two tiers (docs/explanation/reexec.md):

1. POSIX fast path: ``os.execve`` the running interpreter with the exact original command line
   (``sys.orig_argv``). Same PID, nothing spawned; the call never returns when it works.
2. Fallback, and always on Windows: run the program this process was started as, found on PATH
   (``invoke``, or the ``bitnet-crossval`` console script), else ``<python> -m invoke`` (or
   ``<python> -m bitnet_crossval``), as a child sharing our stdio; wait for it and exit with its
   code (128+N for a signal N).

Both tiers set ``BITNET_REPAIR_PARENT=1``; a process that sees it validates and never repairs,
so a re-executed command cannot re-execute again. No shell is involved anywhere: every argument
reaches the child as the same string.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from bitnet_crossval.errors import ProgramNotFound, ReexecTargetMissing
from bitnet_crossval.repair.guard import REPAIR_PARENT_ENV
from bitnet_crossval.util import proc, ui

# Interpreter options that consume the next argument (`python -X dev script.py`), and the
# long one that does the same; see `python --help`.
_OPTIONS_WITH_VALUE = frozenset("WX")
_LONG_OPTIONS_WITH_VALUE = frozenset({"--check-hash-based-pycs"})
# `-c cmd` and `-m mod` end the interpreter's options: there is no script file.
_OPTIONS_ENDING_WITHOUT_SCRIPT = frozenset("cm")

ExecFn = Callable[[str, list[str], Mapping[str, str]], NoReturn]


class WhichFn(Protocol):
    def __call__(self, cmd: str, mode: int = ..., path: str | None = ...) -> str | None: ...


class ForegroundRunner(Protocol):
    def __call__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = ...) -> int: ...


@dataclass(frozen=True, kw_only=True)
class EntryPoint:
    """How this process was started, which decides what the fallback tier runs."""

    program: str
    """Looked up on the child's PATH: ``invoke`` or the console script."""
    module: str
    """Run as ``<python> -m <module>`` when ``program`` is not on PATH."""


INVOKE_ENTRY_POINT = EntryPoint(program="invoke", module="invoke")
_entry_point = INVOKE_ENTRY_POINT


def set_entry_point(entry: EntryPoint) -> None:
    """Called once by the console script; ``invoke`` is the default."""
    global _entry_point
    _entry_point = entry


def entry_point() -> EntryPoint:
    return _entry_point


@dataclass(frozen=True, kw_only=True)
class ReexecPlan:
    """Everything both tiers need, computed once from the process's own view of itself."""

    executable: str
    """The running interpreter (``sys.executable``): the file the fast path execs."""
    orig_argv: tuple[str, ...]
    """The command line exactly as the interpreter received it (``sys.orig_argv``)."""
    exec_argv: tuple[str, ...]
    """``[executable] + orig_argv[1:]``: interpreter options, script or ``-m invoke``, task args."""
    script: str | None
    """The script file named on the original command line, if there was one."""
    task_args: tuple[str, ...]
    """``sys.argv[1:]``: what follows ``invoke`` in the fallback command."""
    child_env: Mapping[str, str]
    """The parent's environment, plus the updates, plus the guard; read-only."""


def plan_reexec(
    *,
    env_updates: Mapping[str, str],
    environ: Mapping[str, str],
    executable: str,
    orig_argv: Sequence[str],
    argv: Sequence[str],
) -> ReexecPlan:
    """The re-exec of the command described by these values; pure, touches nothing."""
    child_env = dict(environ)
    child_env.update(env_updates)
    # Set last so that no caller-supplied update can switch the guard off.
    child_env[REPAIR_PARENT_ENV] = "1"
    return ReexecPlan(
        executable=executable,
        orig_argv=tuple(orig_argv),
        exec_argv=(executable, *orig_argv[1:]),
        script=script_of(orig_argv),
        task_args=tuple(argv[1:]),
        child_env=types.MappingProxyType(child_env),
    )


def script_of(orig_argv: Sequence[str]) -> str | None:
    """The script file an interpreter command line runs, or None for ``-m``, ``-c`` and stdin."""
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-":  # the program comes from stdin
            return None
        if arg == "--":  # the end of the options: the script is next
            return next(args, None)
        if arg in _LONG_OPTIONS_WITH_VALUE:
            next(args, None)
            continue
        if arg.startswith("--"):
            continue
        if not arg.startswith("-"):
            return arg
        # A group of short flags such as `-uB`, `-Wignore` or `-Bm`.
        for position, flag in enumerate(arg[1:], start=1):
            if flag in _OPTIONS_ENDING_WITHOUT_SCRIPT:
                return None
            if flag in _OPTIONS_WITH_VALUE:
                if position == len(arg) - 1:
                    next(args, None)  # the value is the next argument
                break  # the rest of this group is the value
    return None


def exec_skip_reason(plan: ReexecPlan, *, platform: str) -> str | None:
    """Why the fast path cannot work right now, or None when exec is worth attempting.

    Checking first matters for the script: exec would succeed and start an interpreter that
    only prints "can't open file" and exits 2, with no way back to the fallback. The check is
    not a guarantee (the files can vanish after it); exec errors still lead to the fallback.
    """
    if platform == "win32":
        return "no exec() on Windows, skipping it"
    if len(plan.orig_argv) < 2:
        return "original command line unknown, skipping exec()"
    if not os.path.exists(plan.executable):
        return "exe missing, skipping exec()"
    if not (os.path.isfile(plan.executable) and os.access(plan.executable, os.X_OK)):
        return "exe not executable, skipping exec()"
    if plan.script is not None and not os.path.exists(plan.script):
        return f"script missing: {plan.script}, skipping exec()"
    return None


def fallback_command(
    plan: ReexecPlan,
    *,
    interpreter_failed: bool = False,
    which: WhichFn = shutil.which,
    entry: EntryPoint | None = None,
) -> list[str]:
    """The command for the spawn tier: the entry point's program from the child's PATH, else
    ``<python> -m <module>`` (``invoke`` and ``-m invoke`` unless the console script started us).

    The Python is the plan's interpreter when it is still an executable file and exec did not
    just fail on it (``interpreter_failed``: a child would fail the same way), else ``python3``
    or ``python`` from the child's PATH. Whether that Python can import invoke is left to the
    child: it says so itself, and its exit code comes back to the caller.
    """
    entry = entry or entry_point()
    search_path = plan.child_env.get("PATH", os.defpath)
    program = which(entry.program, path=search_path)
    if program is not None:
        return [program, *plan.task_args]
    usable = not interpreter_failed and _is_executable_file(plan.executable)
    python: str | None = plan.executable if usable else None
    for name in ("python3", "python"):
        if python is not None:
            break
        python = which(name, path=search_path)
    if python is None:
        state = "cannot be run" if os.path.exists(plan.executable) else "is gone"
        raise ReexecTargetMissing(
            f"cannot run the command again: the interpreter {plan.executable or '(unknown)'} {state} "
            f"and neither `{entry.program}` nor a Python interpreter is on PATH"
        )
    return [python, "-m", entry.module, *plan.task_args]


def reexec_current_command(
    *,
    env_updates: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    executable: str | None = None,
    orig_argv: Sequence[str] | None = None,
    argv: Sequence[str] | None = None,
    platform: str | None = None,
    execve: ExecFn = os.execve,
    which: WhichFn = shutil.which,
    run_foreground: ForegroundRunner = proc.run_foreground,
) -> NoReturn:
    """Replace this process with the same command, ``BITNET_REPAIR_PARENT=1`` set; never returns.

    Ends in one of three ways: exec succeeds (this process becomes the new command), the
    fallback child finishes (``SystemExit`` with its code), or no way to run the command is
    left (:class:`~bitnet_crossval.errors.ReexecTargetMissing`, exit 2). Every value read from ``sys``
    and ``os`` can be passed in, for tests. Release locks and finish output before calling:
    on the fast path no ``finally`` block or ``atexit`` handler runs.
    """
    plan = plan_reexec(
        env_updates=env_updates or {},
        environ=os.environ if environ is None else environ,
        executable=(sys.executable or "") if executable is None else executable,
        orig_argv=sys.orig_argv if orig_argv is None else orig_argv,
        argv=sys.argv if argv is None else argv,
    )
    _log(f"exe: {plan.executable}")
    _log(f"exe exists: {str(os.path.exists(plan.executable)).lower()}")
    _log(f"args: {list(plan.orig_argv)!r}")
    skip_reason = exec_skip_reason(plan, platform=sys.platform if platform is None else platform)
    exec_failed = False
    if skip_reason is None:
        _log("Attempting exec()...")
        ui.flush_all()  # os.execve discards whatever Python still buffers
        try:
            execve(plan.executable, list(plan.exec_argv), dict(plan.child_env))
        except OSError as exc:
            # The race the check cannot close: the interpreter was deleted or replaced (a
            # venv being recreated) after the check (ENOENT), lost its execute bit (EACCES),
            # or is now a file the kernel cannot run (ENOEXEC). The fallback covers them all.
            _log(f"Fast path failed: {_describe(exc)}")
            exec_failed = True
    else:
        _log(skip_reason)
    _log("Trying invoke fallback...")
    command = fallback_command(plan, interpreter_failed=exec_failed, which=which)
    _log(f"Fallback command: {command!r}")
    try:
        code = run_foreground(command, env=plan.child_env)
    except (ProgramNotFound, OSError) as exc:
        # The program found a moment ago vanished or cannot be run: the same race, one tier down.
        reason = exc.message if isinstance(exc, ProgramNotFound) else _describe(exc)
        raise ReexecTargetMissing(f"cannot run the fallback command {command[0]}: {reason}") from exc
    _log(f"Fallback child exited with code: {code}")
    raise SystemExit(code)


def _is_executable_file(path: str) -> bool:
    return bool(path) and os.path.isfile(path) and os.access(path, os.X_OK)


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno) if exc.errno is not None else None
    return f"{exc} ({name})" if name else str(exc)


def _log(message: str) -> None:
    ui.say(f"[reexec] {message}")
