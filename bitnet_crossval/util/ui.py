"""What humans read: status lines, progress and tables on stderr.

Plain status lines are written without importing rich, so a quick command (a preflight that
finds its backend) does not pay rich's import time; progress bars and tables load rich on
first use. Colour follows NO_COLOR, FORCE_COLOR and whether stderr is a terminal.
Machine-readable output never comes through here: it goes to stdout from the task.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Literal, Protocol, cast

from bitnet_crossval.util import stdio

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

Level = Literal["info", "ok", "warn", "error", "debug"]

_STYLES: dict[Level, str] = {
    "info": "",
    "ok": "\x1b[32m",
    "warn": "\x1b[33m",
    "error": "\x1b[31m",
    "debug": "\x1b[2m",
}
_RESET = "\x1b[0m"

_verbose = False


def set_verbose(verbose: bool) -> None:
    global _verbose
    _verbose = verbose


def is_verbose() -> bool:
    return _verbose


def use_color() -> bool:
    # https://no-color.org: any non-empty NO_COLOR disables colour.
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stdio.SafeStderr().isatty() and os.environ.get("TERM") != "dumb"


def say(message: str, level: Level = "info") -> None:
    """Write one status line to stderr (debug lines only with --verbose)."""
    if level == "debug" and not _verbose:
        return
    style = _STYLES[level] if use_color() else ""
    text = f"{style}{message}{_RESET}" if style else message
    stdio.write_stderr(text + "\n")


def debug(message: str) -> None:
    say(message, "debug")


def warn(message: str) -> None:
    say(f"warning: {message}", "warn")


def console() -> Console:
    """The rich console on stderr; imported on first use."""
    global _console
    if _console is None:
        from rich.console import Console

        # Without a terminal (a CI log, 2>file) rich would assume 80 columns and squeeze tables.
        # A closed or broken stderr must not turn a finished comparison into a crash.
        stderr = cast("IO[str]", stdio.SafeStderr())
        probe = Console(file=stderr)
        _console = Console(file=stderr, highlight=False, width=None if probe.is_terminal else 160)
    return _console


_console: Console | None = None


class ProgressTask(Protocol):
    def advance_to(self, completed: float, total: float | None = None) -> None: ...

    def describe(self, description: str) -> None:
        """Say what is being done now (one bar through several steps)."""
        ...

    def status(self, text: str) -> None:
        """A note on the current step that changes often (``1024/4096 positions, 51 positions/s``):
        live beside the description on a terminal, in the periodic line otherwise; a new
        :meth:`describe` clears it."""
        ...


class _RichTask:
    def __init__(self, progress: Progress, task_id: TaskID) -> None:
        self._progress = progress
        self._task_id = task_id
        self._description = ""

    def advance_to(self, completed: float, total: float | None = None) -> None:
        self._progress.update(self._task_id, completed=completed, total=total)

    def describe(self, description: str) -> None:
        self._description = description
        self._progress.update(self._task_id, description=description)

    def status(self, text: str) -> None:
        shown = f"{self._description}: {text}" if self._description else text
        self._progress.update(self._task_id, description=shown)


PROGRESS_INTERVAL_ENV = "BITNET_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL = 30.0


class _QuietTask:
    """Used when stderr is not a terminal (a CI log, ``2>file``): no live display, but a line
    at least every ``interval`` seconds, so a long build never looks hung."""

    def __init__(self, description: str, interval: float) -> None:
        self._description = description
        self._status = ""
        self._completed: float = 0.0
        self._total: float | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
        self._thread.start()

    def advance_to(self, completed: float, total: float | None = None) -> None:
        self._completed, self._total = completed, total

    def describe(self, description: str) -> None:
        # Without a live display every step gets its own line, so a log shows what ran when.
        self._description = description
        self._status = ""
        say(f"{description} ...")

    def status(self, text: str) -> None:
        self._status = text  # shown by the next periodic line: a line per update would flood a log

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            elapsed = int(time.monotonic() - self._started)
            done = f" {self._completed:.0f}/{self._total:.0f}" if self._total else ""
            note = f", {self._status}" if self._status else ""
            say(f"{self._description}:{done} still running ({elapsed // 60}m{elapsed % 60:02d}s){note}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class Rate:
    """``done/total positions, N positions/s`` for :meth:`ProgressTask.status`, timed from when
    it was made (what a long evaluation shows while it runs)."""

    def __init__(self, task: ProgressTask, total: int, *, unit: str = "positions") -> None:
        self._task = task
        self._total = total
        self._unit = unit
        self._started = time.monotonic()

    def __call__(self, done: float) -> None:
        elapsed = time.monotonic() - self._started
        rate = f", {done / elapsed:.1f} {self._unit}/s" if elapsed > 0 and done > 0 else ""
        self._task.status(f"{done:.0f}/{self._total} {self._unit}{rate}")


def _progress_interval() -> float:
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_PROGRESS_INTERVAL
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL
    return value if 0.0 < value < float("inf") else DEFAULT_PROGRESS_INTERVAL


@contextmanager
def progress(
    description: str, *, total: float | None = None, unit: Literal["bytes", "steps"] = "steps"
) -> Iterator[ProgressTask]:
    """A progress bar on stderr for a download or a build; a plain line when not a terminal."""
    con = console()
    if not con.is_terminal:
        say(f"{description} ...")
        quiet = _QuietTask(description, _progress_interval())
        try:
            yield quiet
        finally:
            quiet.close()
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if unit == "bytes":
        columns += [DownloadColumn(), TransferSpeedColumn()]
    else:
        columns += [MofNCompleteColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=con, transient=False) as bar:
        task_id = bar.add_task(description, total=total)
        yield _RichTask(bar, task_id)


def flush_all() -> None:
    """Flush Python's buffers: os.exec* does not (see the os.execv documentation)."""
    stdio.flush_standard_streams()
