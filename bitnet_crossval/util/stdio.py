"""The standard streams, closed or broken: output that cannot be written is dropped, never a crash.

A command started with stdout or stderr closed (``>&-``, ``2>&-``), or whose reader went away
(``| head``), still reaches its verdict and exits with the verdict's code. What could not be
written is lost: nobody could have read it. :func:`guard_standard_fds` also puts ``/dev/null`` on
a closed descriptor 0, 1 or 2, so the next file the process opens (a report, a lock, a log) never
takes that number and receives text meant for a terminal, its own or a child's.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from typing import TextIO

_STANDARD_FDS = (0, 1, 2)


class _State:
    stdout_closed = False
    """stdout was closed when the command started, or a write to it has failed since."""


def guard_standard_fds() -> None:
    """Put ``/dev/null`` on any of descriptors 0-2 that is closed; note a closed stdout."""
    for fd in _STANDARD_FDS:
        try:
            os.fstat(fd)
        except OSError:
            _fill(fd)
    if sys.stdout is None:
        _State.stdout_closed = True


def _fill(fd: int) -> None:
    try:
        opened = os.open(os.devnull, os.O_RDWR)
    except OSError:  # pragma: no cover (no /dev/null: nothing better to do)
        return
    if opened != fd:  # a lower descriptor was free after all: put /dev/null where it belongs
        os.dup2(opened, fd)
        os.close(opened)


def stdout_closed() -> bool:
    return _State.stdout_closed or sys.stdout is None


def write_stdout(text: str) -> bool:
    """Write ``text`` to stdout and flush; False when stdout is closed or broken (nothing raised)."""
    if _State.stdout_closed:
        return False
    if not _write(sys.stdout, text):
        _State.stdout_closed = True
        _silence(sys.stdout)
        return False
    return True


def _silence(stream: TextIO | None) -> None:
    """Point a broken stream's descriptor at /dev/null, so the flush at exit of what it still
    buffers succeeds (Python would otherwise print "Exception ignored" and exit 120)."""
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)


def write_stderr(text: str) -> bool:
    """Write ``text`` to stderr and flush; False when stderr is closed or broken (nothing raised)."""
    return _write(sys.stderr, text)


def _write(stream: TextIO | None, text: str) -> bool:
    if stream is None:
        return False
    try:
        try:
            stream.write(text)
        except UnicodeEncodeError:  # a stream that takes only its own encoding strictly
            encoding = stream.encoding or "utf-8"
            stream.write(text.encode(encoding, errors="backslashreplace").decode(encoding))
        stream.flush()
    except (OSError, ValueError):  # a closed descriptor or file object, a reader that went away
        return False
    return True


def flush_standard_streams() -> None:
    """Flush Python's buffers of stdout and stderr, whatever state they are in."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class SafeStderr(io.TextIOBase):
    """stderr for a library that writes to a file object (rich): a closed or broken stderr
    swallows the text instead of raising into the command."""

    def write(self, text: str) -> int:
        _write(sys.stderr, text)
        return len(text)

    def flush(self) -> None:
        stream = sys.stderr
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            stream.flush()

    def isatty(self) -> bool:
        stream = sys.stderr
        try:
            return stream is not None and stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        stream = sys.stderr
        if stream is None:
            raise io.UnsupportedOperation("stderr is closed")
        return stream.fileno()
