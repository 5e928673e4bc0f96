"""The one place that runs subprocesses.

Every child goes through :func:`run`: the program is resolved against the *child's* PATH
(cibuildwheel ``util/cmd.py``) and a missing program is a named error; the command is
logged shlex-quoted with ``--verbose``; a failure raises :class:`~tasks.errors.CommandFailed`
carrying the command, the exit code and the tail of its output. No shell is ever involved.
"""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.errors import CommandFailed, ProgramNotFound
from bitnet_crossval.util import ui

TAIL_LINES = 40

LineCallback = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Completed:
    argv: list[str]
    returncode: int
    output: str


def resolve_program(program: str, env: Mapping[str, str] | None) -> str:
    """Absolute path of ``program`` on the child's PATH, or :class:`ProgramNotFound`."""
    if os.sep in program or (os.altsep and os.altsep in program):
        if Path(program).exists():
            return program
        raise ProgramNotFound(program)
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    found = shutil.which(program, path=path)
    if found is None:
        raise ProgramNotFound(program)
    return found


def exit_code_of(returncode: int) -> int:
    """A child killed by signal N reports -N; shells and this suite report 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    on_line: LineCallback | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> Completed:
    """Run ``argv``; stdout and stderr are merged, kept in memory and optionally in a log file.

    ``on_line`` sees each output line as it arrives (progress parsing). The log file is
    appended to, so one log can hold every step of a build.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = resolve_program(args[0], env)
    ui.debug(f"+ {shlex.join(args)}" + (f"   (in {cwd})" if cwd else ""))
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    chunks: list[str] = []
    log = open(log_path, "a", encoding="utf-8", errors="replace") if log_path else None  # noqa: SIM115
    started = time.monotonic()
    try:
        if log is not None:
            log.write(f"+ {shlex.join(args)}\n")
            log.flush()
        with subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        ) as proc:
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    chunks.append(line)
                    tail.append(line)
                    if log is not None:
                        log.write(line)
                    if on_line is not None:
                        on_line(line.rstrip("\n"))
                returncode = proc.wait(timeout=timeout)
            except BaseException:
                # Ctrl-C, a timeout or a callback error: do not leave the child running.
                proc.kill()
                proc.wait()
                raise
    finally:
        if log is not None:
            log.write(f"# finished in {time.monotonic() - started:.1f}s\n")
            log.close()
    result = Completed(argv=args, returncode=exit_code_of(returncode), output="".join(chunks))
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, "".join(tail), log_path=log_path)
    return result


def run_foreground(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run a child that shares our stdin, stdout and stderr; return its exit code (128+N for
    a signal N).

    SIGTERM and SIGHUP sent to us are passed on, so stopping the parent stops the child
    rather than orphaning it (Ctrl-C already reaches both through the terminal).
    """
    args = list(argv)
    args[0] = resolve_program(args[0], env)
    ui.debug(f"+ {shlex.join(args)}")
    with subprocess.Popen(args, env=dict(env) if env is not None else None, cwd=cwd) as proc:
        forwarded = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)
        previous = {}
        for signum in forwarded:
            previous[signum] = signal.signal(signum, lambda n, _f: proc.send_signal(n))
        try:
            while True:
                try:
                    returncode = proc.wait()
                    break
                except KeyboardInterrupt:
                    # The child got the same SIGINT from the terminal; wait for its verdict.
                    continue
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    return exit_code_of(returncode)


def git_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment for git: without variables that redirect it to another repository."""
    scrubbed = {k: v for k, v in env.items() if k not in {"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"}}
    scrubbed.setdefault("GIT_TERMINAL_PROMPT", "0")  # never wait for a password nobody will type
    return scrubbed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a leftover named after a dead pid is safe to remove)."""
    if sys.platform == "win32":
        return False  # os.kill(pid, 0) would terminate it; the backend lock is the guard there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except (OverflowError, OSError):
        return False
    return True
