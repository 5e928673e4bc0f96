"""The one place that runs subprocesses.

Every child goes through :func:`run`: the program is resolved against the *child's* PATH
(cibuildwheel ``util/cmd.py``) and a missing program is a named error; the command is
logged shlex-quoted with ``--verbose``; a failure raises :class:`~bitnet_crossval.errors.CommandFailed`
carrying the command, the exit code and the tail of its output. No shell is ever involved.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from bitnet_crossval.errors import CommandFailed, CommandTimedOut, ProgramNotFound
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import os_error, read_regular_file

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
    group_file: Path | None = None,
    stdout_path: Path | None = None,
    stop: threading.Event | None = None,
) -> Completed:
    """Run ``argv``; stdout and stderr are merged, kept in memory and optionally in a log file.

    ``on_line`` sees each output line as it arrives (progress parsing). The log file is
    appended to, so one log can hold every step of a build. ``timeout`` bounds the whole run,
    also a child that stops writing without exiting (:class:`CommandTimedOut`). With
    ``group_file`` the child gets a process group of its own whose id is kept in that file while
    it runs, so a later run can stop what a killed parent left behind (:func:`stop_group_in`);
    Ctrl-C or an error here stops the whole group. With ``stdout_path`` the child's stdout goes
    to that file byte for byte (a JSON document the command prints), and what is kept, logged
    and passed to ``on_line`` is its stderr alone. When ``stop`` is set while the child runs, the
    child is interrupted as Ctrl-C would (SIGINT), then killed if it is still there after a grace
    period; the run returns with the child's code (the caller knows it asked).
    """
    args = [os.fspath(a) for a in argv]
    args[0] = resolve_program(args[0], env)
    ui.debug(f"+ {shlex.join(args)}" + (f"   (in {cwd})" if cwd else ""))
    log = _open_log(log_path)
    started = time.monotonic()
    try:
        if log is not None:
            log.write(f"+ {shlex.join(args)}\n")
            log.flush()
        streamed = _stream(
            args,
            cwd=cwd,
            env=env,
            log=log,
            on_line=on_line,
            timeout=timeout,
            group_file=group_file,
            stdout_path=stdout_path,
            stop=stop,
        )
    finally:
        if log is not None:
            log.write(f"# finished in {time.monotonic() - started:.1f}s\n")
            log.close()
    if streamed.timed_out:
        raise CommandTimedOut(args, timeout or 0.0, streamed.tail, log_path=log_path)
    result = Completed(argv=args, returncode=exit_code_of(streamed.returncode), output=streamed.output)
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, streamed.tail, log_path=log_path)
    return result


@dataclass(frozen=True, kw_only=True)
class _Streamed:
    returncode: int
    output: str
    tail: str
    timed_out: bool


def _stream(
    args: list[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str] | None,
    log: TextIO | None,
    on_line: LineCallback | None,
    timeout: float | None,
    group_file: Path | None,
    stdout_path: Path | None,
    stop: threading.Event | None,
) -> _Streamed:
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    chunks: list[str] = []
    own_group = group_file is not None and os.name == "posix"
    timed_out = threading.Event()
    with contextlib.ExitStack() as opened:
        stdout_file = opened.enter_context(_open_output(stdout_path)) if stdout_path is not None else None
        child = opened.enter_context(
            subprocess.Popen(
                args,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=stdout_file if stdout_file is not None else subprocess.PIPE,
                stderr=subprocess.PIPE if stdout_file is not None else subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=own_group,
            )
        )
        stream = child.stderr if stdout_file is not None else child.stdout
        assert stream is not None

        def expire() -> None:
            timed_out.set()
            _kill(child, group=own_group)

        if own_group and group_file is not None:
            _write_group_file(group_file, child.pid)
        finished = threading.Event()
        if stop is not None:
            _watch_for_stop(child, stop, finished, group=own_group)
        # A timer, not wait(timeout): a child that stops writing without exiting would
        # otherwise hold the read loop below forever.
        watchdog = threading.Timer(timeout, expire) if timeout else None
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()
        try:
            for line in stream:
                chunks.append(line)
                tail.append(line)
                if log is not None:
                    log.write(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            returncode = child.wait()
        except BaseException:
            # Ctrl-C or a callback error: do not leave the child (or its group) running.
            _kill(child, group=own_group)
            child.wait()
            raise
        finally:
            finished.set()
            if watchdog is not None:
                watchdog.cancel()
            if own_group and group_file is not None:
                group_file.unlink(missing_ok=True)
    return _Streamed(returncode=returncode, output="".join(chunks), tail="".join(tail), timed_out=timed_out.is_set())


STOP_POLL_SECONDS = 0.1


def _watch_for_stop(
    child: subprocess.Popen[str], stop: threading.Event, finished: threading.Event, *, group: bool, grace: float = 5.0
) -> None:
    """A thread that interrupts ``child`` once ``stop`` is set, and ends with the child."""

    def watch() -> None:
        while not finished.wait(STOP_POLL_SECONDS):
            if stop.is_set():
                _interrupt(child, group=group)
                if not finished.wait(grace):
                    _kill(child, group=group)
                return

    threading.Thread(target=watch, name=f"stop-{child.pid}", daemon=True).start()


def _interrupt(child: subprocess.Popen[str], *, group: bool) -> None:
    interrupt = signal.SIGINT if os.name == "posix" else signal.SIGTERM
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(child.pid, interrupt)
        else:
            child.send_signal(interrupt)


def _open_output(path: Path) -> BinaryIO:
    try:
        return open(path, "wb")
    except OSError as exc:
        raise os_error(exc, path) from exc


def _open_log(log_path: Path | None) -> TextIO | None:
    if log_path is None:
        return None
    try:
        return open(log_path, "a", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise os_error(exc, log_path) from exc


def _kill(child: subprocess.Popen[str], *, group: bool, grace: float = 5.0) -> None:
    """Stop ``child``, and with ``group`` its whole process group.

    The group gets SIGTERM first: ninja runs each command in a process group of its own, which
    a signal to this group never reaches, and stops them itself when it is terminated (a SIGKILL
    would leave them running, and nothing would stop them later). What is left after ``grace``
    seconds is killed.
    """
    if not group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            child.kill()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (child.poll() is None or _group_alive(child.pid)):
            time.sleep(0.02)
    finally:
        # Once the leader is reaped, its id is ours only while members of its group remain.
        if child.returncode is None or _group_alive(child.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)


def _write_group_file(path: Path, pgid: int) -> None:
    # The leader's start time goes with the id: a later run must never signal a group that
    # merely reuses the number (after a reboot, or in a copied tree).
    try:
        path.write_text(f"{pgid} {_start_time(pgid)}\n", encoding="ascii")
    except OSError as exc:
        raise os_error(exc, path) from exc


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "-" where unknown."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return "-"
    # Field 22; the command name (field 2) may hold spaces and parentheses, so count from its end.
    fields = stat_line.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else "-"


def stop_group_in(group_file: Path, *, grace: float = 5.0) -> bool:
    """Stop the process group recorded in ``group_file`` by a run whose parent was killed
    (ninja and the compilers outlive a SIGKILLed Python). Returns whether one was stopped.

    The group is ours when its leader is the process recorded (same id, same start time), or
    when the leader is gone and members remain (the kernel does not hand out a group id while
    the group has members). Anything else, or a platform without process groups, is left
    alone. Call it while holding the lock that guards the build tree, before new work there.
    """
    try:
        raw = read_regular_file(group_file)
    except OSError:
        return False
    _discard(group_file)
    parts = (raw or b"").decode("ascii", errors="replace").split()
    if os.name != "posix" or len(parts) != 2 or not parts[0].isdigit():
        return False
    pgid, recorded_start = int(parts[0]), parts[1]
    if pgid <= 1 or not _group_alive(pgid):
        return False
    leader_start = _start_time(pgid)
    if leader_start not in ("-", recorded_start):
        return False  # the id now belongs to another group
    if recorded_start == "-":
        return False  # nothing to tell the two apart with
    ui.say(f"stopping the processes (group {pgid}) left running by an interrupted build")
    try:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _discard(path: Path) -> None:
    # A build tree that is not a directory is reported by whoever uses it next.
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
