"""Two pieces of work at once: one in the calling thread, the other in a thread beside it.

Made for work that leaves the interpreter free while it runs: two child processes that each
use one core (two evaluations by the reference shim; the threads only wait on their children),
or numpy's array work beside a child (the engine's dequantisation during the generation). The
pair then takes as long as the longer one rather than as long as both. The calling thread
keeps the first piece, because signals arrive there: Ctrl-C, or SIGTERM turned into an
exception (:mod:`bitnet_crossval.util.signals`), interrupts it as it would any run, and the
second is then stopped through its ``stop`` event (its child interrupted, then killed; see
:func:`bitnet_crossval.util.proc.run`) and waited for, so nothing is left running. Errors come
out as they would one after the other: the first piece's if it failed, else the second's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

A = TypeVar("A")
B = TypeVar("B")

_JOIN_POLL = 0.1
"""Seconds between looks at the second piece while waiting for it, so a signal is never held up."""
_START_GRACE = 1.0
"""Seconds to wait for a thread whose start a signal cut short to show whether it exists."""


class _Beside(Generic[B]):
    """The second piece, run in a thread of its own; what it returned or raised is kept for the caller."""

    def __init__(self, work: Callable[[threading.Event], B]) -> None:
        self.stop = threading.Event()
        self._work = work
        self._result: B | None = None
        self._error: BaseException | None = None
        # Waited on instead of the thread: a Ctrl-C that lands inside Thread.join can leave the
        # thread looking finished while it still runs.
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="side-by-side", daemon=True)
        self._start_called = False
        self._started = False

    def start(self) -> None:
        self._start_called = True
        self._thread.start()
        self._started = True

    def _run(self) -> None:
        try:
            self._result = self._work(self.stop)
        except BaseException as exc:  # handed to the calling thread, which raises it
            self._error = exc
        finally:
            self._done.set()

    def wait(self) -> None:
        while not self._done.wait(_JOIN_POLL):
            pass

    def stop_and_wait(self) -> BaseException | None:
        """Stop it and wait for it; the first signal's exception (Ctrl-C, SIGTERM) that arrived
        meanwhile, if any. A signal does not cut the wait short: the piece is stopping already,
        and leaving now could leave its child running."""
        deadline = time.monotonic() + _START_GRACE
        interrupted: BaseException | None = None
        while not self._done.is_set():
            try:
                self.stop.set()
                if not self._start_called or (not self._may_run() and time.monotonic() >= deadline):
                    break
                self._done.wait(_JOIN_POLL)
            except BaseException as exc:
                interrupted = interrupted or exc
        return interrupted

    def _may_run(self) -> bool:
        """Whether the thread runs: it started, or Thread.start() was cut short by a signal
        after creating it (its ident then appears at once; a thread that could not be created
        never has one)."""
        return self._started or self._thread.ident is not None

    def result(self) -> B:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # set whenever _error is not


def side_by_side(first: Callable[[], A], second: Callable[[threading.Event], B]) -> tuple[A, B]:
    """Run ``first`` here and ``second`` beside it, and return both results.

    ``second`` is given an event that is set when it must stop early (``first`` failed, or the
    run was interrupted); it should pass it on to the child it waits for. When ``first`` raises,
    ``second`` is stopped and waited for, and ``first``'s exception is raised; otherwise
    ``second``'s, if it raised.
    """
    beside = _Beside(second)
    try:
        beside.start()
        a = first()
        beside.wait()
    except BaseException as exc:
        interrupted = beside.stop_and_wait()
        if interrupted is not None and interrupted is not exc:
            # The run was interrupted while it stopped: it ends as interrupted, whatever failed first.
            raise interrupted from exc
        raise
    return a, beside.result()
