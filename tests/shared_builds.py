"""Work that many tests share (the real llama.cpp, shims and caches built on it), done once per test
session before the first test runs: a pytest plugin, loaded by tests/conftest.py.

Were a shared build run by the first test that needs it, that test's time limit (pytest-timeout)
would cover minutes of someone else's work, and pytest would print nothing while it ran. Here each
shared build

- runs only when a selected test uses its fixture (directly, or through another shared build it
  needs), after collection and deselection, so `pytest -k`, `-m` and a single file pay only for
  what they use;
- runs before the first test, outside every per-test limit, under its own generous bound;
- prints what it does while it runs: its own status lines, and a "still running" line whenever it
  has been quiet for HEARTBEAT_SECONDS;
- when it fails, is reported once, with the tail of its output and the path of its full log; the
  tests that need it then error with one line pointing to that report, and the shared builds that
  need it are not attempted.

A conftest declares a shared build with :func:`shared_build` and hands out its result from a
session fixture of the same name with :func:`shared_result`, so that selecting a test selects the
builds its fixtures name.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

import pytest

HEARTBEAT_SECONDS = 20.0
"""The longest a running shared build stays silent on the terminal."""
TAIL_LINES = 40
"""How much of a failed build's output its report shows (the rest is in its log)."""
STOP_GRACE_SECONDS = 30.0
"""How long a process stopped with SIGINT (as by Ctrl-C) has to clean up before it is killed."""

T = TypeVar("T")
BuildFunction = Callable[["Workshop"], object]


class SharedBuildFailed(Exception):
    """Raised by a build function; its text is the one line its report and its tests' errors give."""


class _BoundExceeded(BaseException):
    """Raised in the main thread when a build outlives its bound; a BaseException, like Ctrl-C, so
    that no ``except Exception`` in the code it interrupts swallows it and every cleanup runs."""


@dataclass(frozen=True)
class SharedBuild:
    name: str
    """The build, and the session fixture that hands out its result."""
    title: str
    bound: float
    """Seconds; generous: reached only by a hang, never by a slow machine."""
    build: BuildFunction
    needs: Callable[[], Sequence[str]]
    """The shared builds it uses (asked when the run is planned: an environment variable may
    make a build unnecessary)."""
    hint: Callable[[], str | None]
    """How to skip it (or that it is skipped), printed in the header of every run that plans it."""


_REGISTRY: dict[str, SharedBuild] = {}


def shared_build(
    name: str,
    *,
    title: str,
    bound: float,
    needs: Sequence[str] | Callable[[], Sequence[str]] = (),
    hint: str | Callable[[], str | None] | None = None,
) -> Callable[[Callable[[Workshop], T]], Callable[[Workshop], T]]:
    """Declare the function it decorates as the shared build ``name``. ``needs`` and ``hint`` may be
    functions, asked when a run is planned (an environment variable may change them)."""

    def register(function: Callable[[Workshop], T]) -> Callable[[Workshop], T]:
        wanted = needs if callable(needs) else (lambda: tuple(needs))
        said = hint if callable(hint) else (lambda: hint)
        _REGISTRY[name] = SharedBuild(name=name, title=title, bound=bound, build=function, needs=wanted, hint=said)
        return function

    return register


def shared_result(request: pytest.FixtureRequest, name: str, kind: type[T]) -> T:
    """The result of the shared build ``name``, for its session fixture; a test whose shared build
    failed (or was never planned) errors here with one line saying where to look."""
    outcome = _state(request.config).outcomes.get(name)
    if outcome is None:
        pytest.fail(
            f"the shared build {name!r} was not prepared before the tests ran: name its fixture in the"
            " signature of the test or of a fixture the test uses (tests/shared_builds.py)",
            pytrace=False,
        )
    if outcome.error is not None:
        pytest.fail(f"the shared build {name!r} {outcome.error}; see 'shared build failed' above", pytrace=False)
    value = outcome.value
    assert isinstance(value, kind), f"the shared build {name!r} gave {type(value).__name__}, not {kind.__name__}"
    return value


# --- what a build function works with --------------------------------------------------------------


class Workshop:
    """What a build function gets: temporary directories, earlier builds' results, and a way to run
    a process whose stderr is shown as progress and kept in the build's log."""

    def __init__(self, config: pytest.Config, progress: _Progress, log: TextIO) -> None:
        self._config = config
        self._progress = progress
        self._log = log
        self._lock = threading.Lock()

    def mktemp(self, name: str) -> Path:
        """A new directory of its own (as tmp_path_factory.mktemp)."""
        return _factory(self._config).mktemp(name)

    def directory(self, name: str) -> Path:
        """The directory ``name`` under the session's base temporary directory (made if missing),
        for a build whose fixtures or tests know where to find it."""
        path = _factory(self._config).getbasetemp() / name
        path.mkdir(exist_ok=True)
        return path

    def result(self, name: str, kind: type[T]) -> T:
        """The value of the shared build ``name``, which this build must list in its ``needs``."""
        outcome = _state(self._config).outcomes[name]
        assert isinstance(outcome.value, kind), name
        return outcome.value

    def say(self, line: str) -> None:
        """One line of progress: on the terminal and in the build's log."""
        with self._lock:
            self._progress.line(f"    {line}")
            self._log.write(line + "\n")
            self._log.flush()

    @contextlib.contextmanager
    def follow(self, path: Path) -> Iterator[None]:
        """Pass on the lines a quiet in-process build writes to its log file ``path`` (a compiler's
        "[3/9] Building ..."), while the body runs."""
        stop = threading.Event()

        def tail() -> None:
            handle: TextIO | None = None
            pending = ""
            try:
                while True:
                    stopping = stop.wait(0.5)
                    if handle is None and path.is_file():
                        handle = path.open(encoding="utf-8", errors="replace")
                    if handle is not None:
                        pending += handle.read()
                        *lines, pending = pending.split("\n")
                        for line in lines:
                            self.say(line)
                    if stopping:
                        return
            finally:
                if handle is not None:
                    handle.close()

        thread = threading.Thread(target=tail, name=f"follow {path.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def run(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None, merge_output: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to its end (the build's bound stops it, with SIGINT first, as Ctrl-C would:
        the suite's commands then stop their own builds). Its stderr (and with ``merge_output`` its
        stdout) is shown as it comes and kept; stdout is returned apart otherwise."""
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if merge_output else out,
                stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # its own group: stopped as one, and Ctrl-C is ours to pass on
            )
            stream = proc.stdout if merge_output else proc.stderr
            assert stream is not None
            lines: list[str] = []
            try:
                with stream:
                    for line in stream:
                        lines.append(line)
                        self.say(line.rstrip("\n"))
                returncode = proc.wait()
            except BaseException:
                _stop_group(proc)
                raise
            out.seek(0)
            stdout = "" if merge_output else out.read()
        return subprocess.CompletedProcess(list(argv), returncode, stdout, "".join(lines))

    def run_invoke(self, args: Sequence[str], *, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        """`python -m invoke <args>` from the repository root, as a user runs it."""
        from tests.helpers import REPO_ROOT

        # The suite's own "still running" lines come more often than this plugin's heartbeat, so
        # a long compile shows the suite's progress rather than two kinds of beat.
        chatty = {**env, "BITNET_PROGRESS_INTERVAL": str(HEARTBEAT_SECONDS * 0.75)}
        return self.run([sys.executable, "-m", "invoke", *args], env=chatty, cwd=REPO_ROOT)


def _factory(config: pytest.Config) -> pytest.TempPathFactory:
    # What pytest's own tmp_path_factory fixture returns: no fixture can be requested before the
    # first test, and a second factory would number (and clean up) base directories of its own.
    factory: pytest.TempPathFactory = config._tmp_path_factory  # type: ignore[attr-defined]
    return factory


def _stop_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_SECONDS)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- running the plan ------------------------------------------------------------------------------


@dataclass
class _Outcome:
    seconds: float = 0.0
    value: object = None
    error: str | None = None
    """None when built; else what the fixture's error says after "the shared build NAME"."""
    log: Path | None = None


@dataclass
class _State:
    outcomes: dict[str, _Outcome] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    if _STATE not in config.stash:
        config.stash[_STATE] = _State()
    return config.stash[_STATE]


def plan(fixture_names: Iterable[str]) -> list[SharedBuild]:
    """The shared builds that the fixtures ``fixture_names`` need, each after what it needs."""
    order: list[SharedBuild] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in path:
            raise pytest.UsageError(f"shared builds need each other in a circle: {' -> '.join((*path, name))}")
        build = _REGISTRY.get(name)
        if build is None:
            raise pytest.UsageError(f"shared build {path[-1]!r} needs {name!r}, which no conftest declares")
        for needed in build.needs():
            visit(needed, (*path, name))
        seen.add(name)
        order.append(build)

    for name in sorted(set(fixture_names)):
        if name in _REGISTRY:
            visit(name, ())
    return order


class _Progress:
    """Lines on pytest's terminal, from the main thread and the heartbeat thread alike."""

    def __init__(self, config: pytest.Config) -> None:
        self._terminal: Any = config.pluginmanager.get_plugin("terminalreporter")
        self._lock = threading.Lock()
        self.last = time.monotonic()

    def line(self, text: str, **markup: bool) -> None:
        with self._lock:
            if self._terminal is not None:
                self._terminal.write_line(text, **markup)
                self._terminal.flush()  # a pipe (CI, nox) would otherwise hold it back
            else:
                print(text, file=sys.__stdout__, flush=True)
            self.last = time.monotonic()

    def separator(self, title: str, **markup: bool) -> None:
        with self._lock:
            if self._terminal is not None:
                self._terminal.write_sep("-", title, **markup)
                self._terminal.flush()
            self.last = time.monotonic()

    @contextlib.contextmanager
    def heartbeat(self, label: str) -> Iterator[None]:
        started = time.monotonic()
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(1.0):
                if time.monotonic() - self.last >= HEARTBEAT_SECONDS:
                    self.line(f"    {label}: still running ({_duration(time.monotonic() - started)})")

        thread = threading.Thread(target=beat, name=f"heartbeat {label}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class _LineSink(io.TextIOBase):
    """What an in-process build prints (the suite writes its status lines to sys.stderr), passed on
    line by line; not a terminal, so the suite prints plain lines and its own "still running"."""

    def __init__(self, workshop: Workshop) -> None:
        self._workshop = workshop
        self._pending = ""
        self._lock = threading.Lock()  # the suite's own heartbeat writes from a thread

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._workshop.say(line)
        return len(text)

    def flush(self) -> None:
        pass

    def close_pending(self) -> None:
        with self._lock:
            if self._pending:
                self._workshop.say(self._pending)
                self._pending = ""


@contextlib.contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    """Raise _BoundExceeded in the main thread after ``seconds`` (SIGALRM: no per-test timer runs
    between tests, and a blocked read or wait is interrupted as by Ctrl-C)."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise _BoundExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _duration(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s"


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-TAIL_LINES:]
    except OSError:
        return []


def run_shared_builds(config: pytest.Config, builds: Sequence[SharedBuild]) -> None:
    state = _state(config)
    progress = _Progress(config)
    progress.separator("shared builds")
    hints = [hint for hint in dict.fromkeys(b.hint() for b in builds) if hint]
    progress.line(
        f"shared builds for the selected tests, before the first test and outside any per-test time limit:"
        f" {', '.join(b.name for b in builds)}" + "".join(f"; {hint}" for hint in hints)
    )
    logs = _factory(config).mktemp("shared-builds")
    for number, build in enumerate(builds, start=1):
        label = f"[{number}/{len(builds)}] {build.name}"
        outcome = _Outcome()
        state.outcomes[build.name] = outcome
        state.order.append(build.name)
        failed = [name for name in build.needs() if state.outcomes[name].error is not None]
        if failed:
            outcome.error = f"was not built: it needs {', '.join(map(repr, failed))}, which failed"
            progress.line(f"{label}: not built: it needs {', '.join(failed)}, which failed", yellow=True)
            continue
        progress.line(f"{label}: {build.title} (bound {_duration(build.bound)}) ...")
        started = time.monotonic()
        outcome.log = logs / f"{build.name}.log"
        with outcome.log.open("w", encoding="utf-8") as log:
            workshop = Workshop(config, progress, log)
            sink = _LineSink(workshop)
            try:
                with (
                    progress.heartbeat(build.name),
                    contextlib.redirect_stdout(sink),
                    contextlib.redirect_stderr(sink),
                    _bounded(build.bound),
                ):
                    outcome.value = build.build(workshop)
            except _BoundExceeded:
                outcome.error = f"did not finish within its bound of {_duration(build.bound)} and was stopped"
            except SharedBuildFailed as exc:
                outcome.error = f"failed: {exc}"
            except Exception as exc:
                outcome.error = f"failed: {type(exc).__name__}: {exc}".splitlines()[0]
                log.write("".join(traceback.format_exception(exc)))
            finally:
                sink.close_pending()
        outcome.seconds = time.monotonic() - started
        if outcome.error is None:
            progress.line(f"{label}: done in {_duration(outcome.seconds)}", green=True)
            continue
        progress.separator(f"shared build failed: {build.name}", red=True, bold=True)
        progress.line(f"{build.name} ({build.title}) {outcome.error}, after {_duration(outcome.seconds)}", red=True)
        tail = _tail(outcome.log)
        if tail:
            progress.line(f"the last {len(tail)} lines of its output (all of it in {outcome.log}):")
            for line in tail:
                progress.line(f"    {line}")
        progress.line(f"every test that needs {build.name!r} errors, pointing here", red=True)
        progress.separator("shared builds")
    progress.separator("tests")


# --- hooks -----------------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Before pytest's own loop runs the first test: the shared builds the selected tests need."""
    config = session.config
    if config.option.collectonly or (session.testsfailed and not config.option.continue_on_collection_errors):
        return  # pytest's loop then lists the tests, or stops on the collection errors
    wanted = {name for item in session.items if not _skipped(item) for name in getattr(item, "fixturenames", ())}
    builds = plan(wanted)
    if not builds:
        return
    capture: Any = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        run_shared_builds(config, builds)


def _skipped(item: pytest.Item) -> bool:
    """Whether a mark skips the test whatever happens (skip, or skipif on a plain True): its shared
    builds would be built for nothing. A skipif on a string is left to pytest."""
    if item.get_closest_marker("skip") is not None:
        return True
    return any(
        mark.args and all(isinstance(arg, bool) for arg in mark.args) and any(mark.args)
        for mark in item.iter_markers("skipif")
    )


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = _state(config)
    if not state.order:
        return
    terminalreporter.write_sep("-", "shared builds")
    for name in state.order:
        outcome = state.outcomes[name]
        if outcome.error is None:
            terminalreporter.write_line(f"{name}: built in {_duration(outcome.seconds)}")
        elif outcome.log is not None and outcome.log.is_file():
            terminalreporter.write_line(f"{name} {outcome.error} (its log: {outcome.log})", red=True)
        else:
            terminalreporter.write_line(f"{name} {outcome.error}", red=True)
