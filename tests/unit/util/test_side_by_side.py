"""Two pieces of work at once: the results, the errors, and the second stopped when the first fails."""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable

import pytest

from bitnet_crossval.util.side_by_side import side_by_side

WAIT = 10.0  # seconds an event is waited for: never reached when the code is right


def test_both_run_at_the_same_time_and_both_results_come_back() -> None:
    second_started = threading.Event()
    first_done = threading.Event()

    def first() -> str:
        assert second_started.wait(WAIT)
        first_done.set()
        return "first"

    def second(stop: threading.Event) -> int:
        second_started.set()
        assert first_done.wait(WAIT)  # still running when the first finished
        return 2

    assert side_by_side(first, second) == ("first", 2)


def _failing_once_started(started: threading.Event) -> Callable[[], None]:
    """A first piece that fails as soon as the second has started."""

    def first() -> None:
        assert started.wait(WAIT)
        raise ValueError("first failed")

    return first


def test_the_first_failing_stops_the_second_waits_for_it_and_raises_the_first_error() -> None:
    stopped, finished = threading.Event(), threading.Event()
    started = threading.Event()
    first = _failing_once_started(started)

    def second(stop: threading.Event) -> None:
        started.set()
        if stop.wait(WAIT):
            stopped.set()
        time.sleep(0.05)  # stopping takes a moment: the caller must wait for it
        finished.set()
        raise RuntimeError("stopped")

    with pytest.raises(ValueError, match="first failed"):
        side_by_side(first, second)
    assert stopped.is_set() and finished.is_set()


def test_the_second_failing_is_raised_after_the_first_finished() -> None:
    first_finished = threading.Event()

    def first() -> None:
        time.sleep(0.05)
        first_finished.set()

    def second(stop: threading.Event) -> None:
        raise OSError("second failed")

    with pytest.raises(OSError, match="second failed"):
        side_by_side(first, second)
    assert first_finished.is_set()


@pytest.mark.parametrize("when", ["while the first runs", "while the second is waited for"])
def test_ctrl_c_in_the_calling_thread_stops_the_second(when: str) -> None:
    stopped = threading.Event()
    started = threading.Event()

    def first() -> None:
        assert started.wait(WAIT)
        if when == "while the first runs":
            _thread.interrupt_main()  # Ctrl-C, delivered to the calling thread as a signal would be
            time.sleep(WAIT)
        else:
            threading.Timer(0.1, _thread.interrupt_main).start()  # arrives once the first has returned

    def second(stop: threading.Event) -> None:
        started.set()
        if stop.wait(WAIT):
            stopped.set()

    with pytest.raises(KeyboardInterrupt):
        side_by_side(first, second)
    assert stopped.is_set()


def test_ctrl_c_as_the_second_starts_still_stops_and_waits_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal can land inside Thread.start(), after the thread exists: it is stopped all the same."""
    stopped, finished = threading.Event(), threading.Event()
    real_start = threading.Thread.start

    def start_then_interrupted(self: threading.Thread) -> None:
        real_start(self)
        raise KeyboardInterrupt  # as if Ctrl-C arrived while start() waited for the thread

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupted)

    def second(stop: threading.Event) -> None:
        if stop.wait(WAIT):
            stopped.set()
        time.sleep(0.05)
        finished.set()

    with pytest.raises(KeyboardInterrupt):
        side_by_side(lambda: None, second)
    assert stopped.is_set() and finished.is_set()


def test_a_second_that_could_not_start_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_start(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="can't start new thread"):
        side_by_side(lambda: None, lambda stop: None)
    assert time.monotonic() - started < 5


def test_ctrl_c_while_the_second_stops_after_the_first_failed_ends_the_run_as_interrupted() -> None:
    started = threading.Event()
    first = _failing_once_started(started)

    def second(stop: threading.Event) -> None:
        started.set()
        assert stop.wait(WAIT)
        _thread.interrupt_main()  # Ctrl-C while the calling thread waits for this one to stop
        time.sleep(0.3)

    with pytest.raises(KeyboardInterrupt) as caught:
        side_by_side(first, second)
    assert isinstance(caught.value.__cause__, ValueError)
