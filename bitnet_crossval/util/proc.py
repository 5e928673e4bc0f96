"""The one place that runs subprocesses.

Every child goes through :func:`run`: the program is resolved against the *child's* PATH
(cibuildwheel ``util/cmd.py``) and a missing program is a named error, as is one the system
will not start; the command is logged shlex-quoted with ``--verbose``; a failure raises
:class:`~bitnet_crossval.errors.CommandFailed` carrying the command, the exit code and the tail
of its output. No shell is ever involved.

Memory stays bounded whatever a child prints: the end of its output is kept
(:data:`OUTPUT_LIMIT` characters, enough for every document a caller parses from the last
lines), all of it goes to the log file when there is one. A time limit holds even for a child
that stops writing, or whose own children keep its output open after it exits.
:func:`bitnet_crossval.util.signals.stop_on_termination` turns SIGTERM and SIGHUP into an
exception, which stops a running child as Ctrl-C does.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import queue
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, TextIO

from bitnet_crossval.errors import (
    CommandFailed,
    CommandTimedOut,
    ProgramCouldNotStart,
    ProgramNotFound,
)
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import os_error, read_regular_file

TAIL_LINES = 40
TAIL_LINE_CHARS = 2000
"""A failing child's last lines are shown to a person: each is cut to this length."""
OUTPUT_LIMIT = 4 << 20
"""Characters of a child's output kept in memory: the end of it (the shim's JSON document is its
last line, a few hundred kilobytes at most). The log file, when there is one, gets everything."""
LINE_LIMIT = 1 << 20
"""A line longer than this (a child that never writes a newline) reaches ``on_line`` in pieces."""
DRAIN_GRACE = 2.0
"""Seconds to wait for the end of a child's output once it has exited: a child of its own that
keeps the pipe open is not waited for longer."""
_CHUNK = 1 << 16
_POLL = 0.1

LineCallback = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Completed:
    argv: list[str]
    returncode: int
    output: str
    """The end of the output (at most :data:`OUTPUT_LIMIT` characters, whole lines)."""
    truncated: bool = False
    """Whether the beginning of the output was dropped."""


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
    own_group: bool = False,
    log_limit: int | None = None,
    stdout_path: Path | None = None,
    stop: threading.Event | None = None,
) -> Completed:
    """Run ``argv``; stdout and stderr are merged, the end kept in memory, all of it optionally
    in a log file (at most ``log_limit`` bytes of it).

    ``on_line`` sees each output line as it arrives (progress parsing). The log file is
    appended to, so one log can hold every step of a build. ``timeout`` bounds the whole run,
    also a child that stops writing without exiting (:class:`CommandTimedOut`).

    With ``own_group`` the child gets a process group of its own, and the whole group is
    stopped at the time limit, on Ctrl-C, SIGTERM or an error here, and once the child has
    exited (what it left running is stopped too). ``group_file`` implies ``own_group`` and keeps
    the group's id in that file while it runs, so a later run can stop what a killed parent left
    behind (:func:`stop_group_in`).

    With ``stdout_path`` the child's stdout goes to that file byte for byte (a JSON document the
    command prints), and what is kept, logged and passed to ``on_line`` is its stderr alone. When
    ``stop`` is set while the child runs, the child is interrupted as Ctrl-C would (SIGINT), then
    killed if it is still there after a grace period; the run returns with the child's code (the
    caller knows it asked).

    A program that does not exist raises :class:`ProgramNotFound`; one the system will not start
    (a directory, no execute permission, not an executable format) :class:`ProgramCouldNotStart`.
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
            log=_LimitedLog(log, log_limit) if log is not None else None,
            on_line=on_line,
            timeout=timeout,
            group_file=group_file,
            own_group=own_group or group_file is not None,
            stdout_path=stdout_path,
            stop=stop,
        )
    finally:
        if log is not None:
            log.write(f"# finished in {time.monotonic() - started:.1f}s\n")
            log.close()
    if streamed.timed_out:
        raise CommandTimedOut(args, timeout or 0.0, streamed.tail, log_path=log_path)
    result = Completed(
        argv=args, returncode=exit_code_of(streamed.returncode), output=streamed.output, truncated=streamed.truncated
    )
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, streamed.tail, log_path=log_path)
    return result


@dataclass(frozen=True, kw_only=True)
class _Streamed:
    returncode: int
    output: str
    truncated: bool
    tail: str
    timed_out: bool


class _LimitedLog:
    """A log file that takes at most ``limit`` bytes of a child's output, then says it stopped."""

    def __init__(self, log: TextIO, limit: int | None) -> None:
        self._log = log
        self._left = limit

    def write(self, text: str) -> None:
        if self._left is None:
            self._log.write(text)
            return
        if self._left <= 0:
            return
        if len(text) >= self._left:
            self._log.write(text[: self._left])
            self._log.write("\n# [the rest of the output is not logged: the log reached its size limit]\n")
            self._left = 0
            return
        self._log.write(text)
        self._left -= len(text)


class _Kept:
    """The end of a child's output, at most ``limit`` characters (trimmed in batches, so that a
    child printing without pause costs amortised constant time per character)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self._limit:
            self._trim()

    def _trim(self) -> None:
        joined = "".join(self._parts)
        if len(joined) > self._limit:
            joined = joined[-self._limit :]
            self.truncated = True
        self._parts = [joined]
        self._size = len(joined)

    def text(self) -> str:
        self._trim()
        text = self._parts[0] if self._parts else ""
        if self.truncated:
            cut = text.find("\n")
            text = text[cut + 1 :] if cut >= 0 else text  # the first line is only a part of one
        return text


class _Lines:
    """Text arriving in chunks, handed on as whole lines (``on_line``); a line longer than
    :data:`LINE_LIMIT` is handed on in pieces rather than held without bound."""

    def __init__(self, on_line: LineCallback | None) -> None:
        self._on_line = on_line
        self._pending = ""

    def add(self, text: str) -> None:
        if self._on_line is None:
            return
        self._pending += text
        while True:
            cut = self._pending.find("\n")
            if cut < 0:
                break
            line, self._pending = self._pending[:cut], self._pending[cut + 1 :]
            self._on_line(line)
        while len(self._pending) > LINE_LIMIT:
            piece, self._pending = self._pending[:LINE_LIMIT], self._pending[LINE_LIMIT:]
            self._on_line(piece)

    def close(self) -> None:
        if self._on_line is not None and self._pending:
            self._on_line(self._pending)
        self._pending = ""


class _Reader:
    """Reads a child's output pipe in a thread, so the caller can keep a time limit and stop
    waiting when the pipe stays open after the child exited.

    The queue is bounded: a child that prints faster than the caller consumes waits for it. When
    the caller gives up (:meth:`abandon`), the thread drains and drops the rest, and closes the
    pipe itself once every writer has closed it.
    """

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
        self._abandoned = threading.Event()
        self._thread = threading.Thread(target=self._read, name="proc-output-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                chunk = self._read_chunk()
                if not chunk:
                    break
                self._put(chunk)
        finally:
            self._put(None)
            with contextlib.suppress(OSError):
                self._pipe.close()

    def _read_chunk(self) -> bytes:
        try:
            read1 = getattr(self._pipe, "read1", None)
            return bytes(read1(_CHUNK) if read1 is not None else self._pipe.read(_CHUNK))
        except (OSError, ValueError):
            return b""

    def _put(self, item: bytes | None) -> None:
        while not self._abandoned.is_set():
            try:
                self.chunks.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def abandon(self) -> None:
        self._abandoned.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class _Output:
    """Where a child's output goes as it arrives: the kept end, the log, ``on_line``."""

    def __init__(self, log: _LimitedLog | None, on_line: LineCallback | None) -> None:
        self.kept = _Kept(OUTPUT_LIMIT)
        self._log = log
        self._lines = _Lines(on_line)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def take(self, chunk: bytes, *, final: bool = False) -> None:
        text = self._decoder.decode(chunk, final=final)
        if text:
            self.kept.add(text)
            if self._log is not None:
                self._log.write(text)
            self._lines.add(text)
        if final:
            self._lines.close()


def _stream(
    args: list[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str] | None,
    log: _LimitedLog | None,
    on_line: LineCallback | None,
    timeout: float | None,
    group_file: Path | None,
    own_group: bool,
    stdout_path: Path | None,
    stop: threading.Event | None,
) -> _Streamed:
    own_group = own_group and os.name == "posix"
    output = _Output(log, on_line)
    with contextlib.ExitStack() as opened:
        stdout_file = opened.enter_context(_open_output(stdout_path)) if stdout_path is not None else None
        child = _start(args, cwd=cwd, env=env, own_group=own_group, stdout=stdout_file)
        stream = child.stderr if stdout_file is not None else child.stdout
        assert stream is not None
        deadline = time.monotonic() + timeout if timeout else None
        stopper = _Stopper(child, stop, group=own_group)
        reader: _Reader | None = None
        try:
            if own_group and group_file is not None:
                _write_group_file(group_file, child.pid)
            reader = _Reader(stream)
            timed_out = not _pump(child, reader, output, deadline, stopper)
            output.take(b"", final=True)
            returncode = None if timed_out else _wait(child, deadline, stopper)
            if returncode is None:
                timed_out = True
                _kill(child, group=own_group)
                returncode = child.wait()
        except BaseException:
            # Ctrl-C, SIGTERM (signals.stop_on_termination) or a callback error: do not leave the child
            # (or its group) running.
            _kill(child, group=own_group)
            child.wait()
            raise
        finally:
            if own_group and child.returncode is not None and _group_alive(child.pid):
                _kill_group(child.pid)  # what the child left running when it exited
            if reader is not None:
                reader.abandon()
                reader.join(timeout=_POLL)
            if own_group and group_file is not None:
                group_file.unlink(missing_ok=True)
    text = output.kept.text()
    return _Streamed(
        returncode=returncode, output=text, truncated=output.kept.truncated, tail=_tail(text), timed_out=timed_out
    )


class _Stopper:
    """The caller's ``stop`` event, looked at while the child runs: once it is set, the child is
    interrupted as Ctrl-C would, and killed if it is still there ``grace`` seconds later."""

    def __init__(
        self, child: subprocess.Popen[bytes], stop: threading.Event | None, *, group: bool, grace: float = 5.0
    ) -> None:
        self._child = child
        self._stop = stop
        self._group = group
        self._grace = grace
        self._interrupted_at: float | None = None

    def check(self) -> None:
        if self._stop is None or not self._stop.is_set() or self._child.poll() is not None:
            return
        now = time.monotonic()
        if self._interrupted_at is None:
            self._interrupted_at = now
            _interrupt(self._child, group=self._group)
        elif now - self._interrupted_at >= self._grace:
            _kill(self._child, group=self._group)


def _interrupt(child: subprocess.Popen[bytes], *, group: bool) -> None:
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


def _pump(
    child: subprocess.Popen[bytes], reader: _Reader, output: _Output, deadline: float | None, stopper: _Stopper
) -> bool:
    """Hand the child's output on until it ends; False when the deadline passed first.

    Once the child has exited, its output is waited for :data:`DRAIN_GRACE` seconds more: a
    process it started may hold the pipe open for as long as it likes.
    """
    exited_at: float | None = None
    while True:
        stopper.check()
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        if exited_at is None and child.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at >= DRAIN_GRACE:
            return True
        wait = _POLL if deadline is None else max(0.0, min(_POLL, deadline - now))
        try:
            chunk = reader.chunks.get(timeout=wait)
        except queue.Empty:
            continue
        if chunk is None:
            return True
        output.take(chunk)


def _start(
    args: list[str], *, cwd: Path | None, env: Mapping[str, str] | None, own_group: bool, stdout: BinaryIO | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE if stdout is not None else subprocess.STDOUT,
            start_new_session=own_group,
        )
    except FileNotFoundError as exc:
        if cwd is not None and not cwd.is_dir():
            raise ProgramCouldNotStart(args[0], f"its working directory {cwd} does not exist") from exc
        raise ProgramNotFound(args[0]) from exc
    except OSError as exc:
        raise ProgramCouldNotStart(args[0], _start_failure(args[0], exc)) from exc


def _start_failure(program: str, exc: OSError) -> str:
    """Why the system would not start ``program``, in words."""
    try:
        mode = os.stat(program).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        return "it is a directory"
    if mode is not None and not stat.S_ISREG(mode):
        return "it is not a regular file"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "it is not executable (permission denied)"
    if exc.errno == errno.ENOEXEC:
        return "it is not a program this system can run (not an executable, or a script without a #! line)"
    return exc.strerror or str(exc)


def _wait(child: subprocess.Popen[bytes], deadline: float | None, stopper: _Stopper) -> int | None:
    """The child's exit status, or None when the deadline passes first (its output may have
    ended long before it exits)."""
    while True:
        stopper.check()
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        try:
            return child.wait(timeout=_POLL if remaining is None else min(_POLL, remaining))
        except subprocess.TimeoutExpired:
            continue


def _tail(output: str) -> str:
    """The last :data:`TAIL_LINES` lines, each cut to :data:`TAIL_LINE_CHARS` characters."""
    end = output[-(TAIL_LINES + 1) * (TAIL_LINE_CHARS + 1) :]  # never split millions of short lines
    lines = end.splitlines(keepends=True)[-TAIL_LINES:]
    return "".join(line if len(line) <= TAIL_LINE_CHARS else line[:TAIL_LINE_CHARS] + " [...]\n" for line in lines)


def _open_log(log_path: Path | None) -> TextIO | None:
    if log_path is None:
        return None
    try:
        return open(log_path, "a", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise os_error(exc, log_path) from exc


def _kill(child: subprocess.Popen[bytes], *, group: bool, grace: float = 5.0) -> None:
    """Stop ``child``, and with ``group`` its whole process group."""
    if not group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            child.kill()
        return
    _kill_group(child.pid, child=child, grace=grace)


def _kill_group(pgid: int, *, child: subprocess.Popen[bytes] | None = None, grace: float = 5.0) -> None:
    """Stop the process group ``pgid`` (led by ``child`` when given).

    The group gets SIGTERM first: ninja runs each command in a process group of its own, which
    a signal to this group never reaches, and stops them itself when it is terminated (a SIGKILL
    would leave them running, and nothing would stop them later). What is left after ``grace``
    seconds is killed.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and ((child is not None and child.poll() is None) or _group_alive(pgid)):
            time.sleep(0.02)
    finally:
        # Once the leader is reaped, its id is ours only while members of its group remain.
        if (child is not None and child.returncode is None) or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


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
    """Whether the group has a member that still runs. A killed member stays a zombie until its
    parent reaps it (for an orphan, PID 1, which may take its time): that is not running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    states = _member_states(pgid)
    return states is None or any(state != "Z" for state in states)


def _member_states(pgid: int) -> list[str] | None:
    """The states (``R``, ``S``, ``Z``, ...) of the group's members from /proc, None without it."""
    proc_root = Path("/proc")
    if not (proc_root / "self" / "stat").exists():
        return None
    states = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        # Fields 3 (state) and 5 (process group), after the command name, which may hold spaces.
        fields = stat_line.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[2] == str(pgid):
            states.append(fields[0])
    return states


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
