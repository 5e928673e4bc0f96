"""SIGTERM and SIGHUP as an exception, so they end a command the way Ctrl-C does.

A module apart from :mod:`bitnet_crossval.util.proc`: every command runs inside
:func:`stop_on_termination`, and most never start a child process.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from bitnet_crossval.errors import TerminationRequested


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`~bitnet_crossval.errors.TerminationRequested`
    in the main thread, as SIGINT raises ``KeyboardInterrupt``: every way out then stops the
    children (:func:`bitnet_crossval.util.proc.run` stops a child's whole group) and removes
    temporary directories.

    A second signal while that cleanup runs gets the default action (the process ends at once),
    so an impatient user is not held up. Outside the main thread this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous: dict[signal.Signals, object] = {}

    def raise_termination(signum: int, _frame: object) -> None:
        for each in signals:
            signal.signal(each, signal.SIG_DFL)
        raise TerminationRequested(signum, signal.Signals(signum).name)

    for each in signals:
        previous[each] = signal.signal(each, raise_termination)
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)  # type: ignore[arg-type]
