from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitnet_crossval.errors import BadInput, LockTimeout
from bitnet_crossval.store.lock import (
    DEFAULT_LOCK_TIMEOUT,
    LOCK_TIMEOUT_ENV,
    describe_owner,
    exclusive_lock,
    lock_timeout_from,
    owner_path,
)
from bitnet_crossval.util import ui

# --- lock_timeout_from -----------------------------------------------------------------------


def test_lock_timeout_defaults_to_an_hour() -> None:
    assert lock_timeout_from({}) == DEFAULT_LOCK_TIMEOUT == 3600.0
    assert lock_timeout_from({LOCK_TIMEOUT_ENV: ""}) == 3600.0
    assert lock_timeout_from({LOCK_TIMEOUT_ENV: "  "}) == 3600.0


@pytest.mark.parametrize(("raw", "seconds"), [("600", 600.0), ("0", 0.0), (" 2.5 ", 2.5), ("1e2", 100.0)])
def test_lock_timeout_reads_seconds(raw: str, seconds: float) -> None:
    assert lock_timeout_from({LOCK_TIMEOUT_ENV: raw}) == seconds


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "-1", "ten", "10s", "1e400"])
def test_a_bad_lock_timeout_is_bad_input_naming_the_variable(raw: str) -> None:
    with pytest.raises(BadInput) as caught:
        lock_timeout_from({LOCK_TIMEOUT_ENV: raw})
    assert caught.value.exit_code == 6
    assert "BITNET_LOCK_TIMEOUT" in caught.value.message
    assert "BITNET_LOCK_TIMEOUT" in caught.value.next_step


def test_other_variables_do_not_count() -> None:
    assert lock_timeout_from({"BITNET_LOCK_TIMEOUTS": "5", "LOCK_TIMEOUT": "5"}) == 3600.0


# --- describe_owner --------------------------------------------------------------------------


def test_describe_owner_reads_the_note(tmp_path: Path) -> None:
    lock_path = tmp_path / "llama.lock"
    note = {"pid": 4242, "host": "buildbox", "since": "2024-01-02T03:04:05+0000", "purpose": "install llama.cpp"}
    owner_path(lock_path).write_text(json.dumps(note))
    assert describe_owner(lock_path) == "pid 4242 on buildbox, since 2024-01-02T03:04:05+0000 (install llama.cpp)"


def test_the_owner_note_sits_next_to_the_lock(tmp_path: Path) -> None:
    assert owner_path(tmp_path / "llama.lock") == tmp_path / "llama.lock.owner"


@pytest.mark.parametrize(
    "content",
    [
        "",
        '{"pid": 1, "host": "h"',  # truncated while its holder wrote it
        "not json",
        "[1, 2]",
        '"pid"',
        "42",
        '{"pid": 1, "host": "h", "since": "now"}',  # no purpose
    ],
)
def test_describe_owner_with_a_garbled_note_says_another_process(tmp_path: Path, content: str) -> None:
    lock_path = tmp_path / "llama.lock"
    owner_path(lock_path).write_text(content)
    assert describe_owner(lock_path) == "another process"


def test_describe_owner_without_a_note_says_another_process(tmp_path: Path) -> None:
    assert describe_owner(tmp_path / "llama.lock") == "another process"


def test_describe_owner_with_a_directory_as_note_says_another_process(tmp_path: Path) -> None:
    lock_path = tmp_path / "llama.lock"
    owner_path(lock_path).mkdir()
    assert describe_owner(lock_path) == "another process"


def test_describe_owner_with_a_fifo_as_note_does_not_block(tmp_path: Path) -> None:
    lock_path = tmp_path / "llama.lock"
    note = owner_path(lock_path)
    os.mkfifo(note)
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(describe_owner(lock_path)), daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        os.close(os.open(note, os.O_WRONLY | os.O_NONBLOCK))  # let it go on, then fail
        thread.join(5)
        pytest.fail("describe_owner blocked on a FIFO")
    assert result == ["another process"]


def test_describe_owner_with_a_deeply_nested_note_says_another_process(tmp_path: Path) -> None:
    lock_path = tmp_path / "llama.lock"
    owner_path(lock_path).write_text("[" * 100_000 + "]" * 100_000)
    assert describe_owner(lock_path) == "another process"


# --- exclusive_lock ------------------------------------------------------------------------------


def test_exclusive_lock_writes_the_owner_note_and_removes_it(tmp_path: Path) -> None:
    lock_path = tmp_path / "locks" / "llama.lock"  # the directory is created on demand
    with exclusive_lock(lock_path, purpose="install llama.cpp", timeout=1):
        note = json.loads(owner_path(lock_path).read_text())
        assert note["pid"] == os.getpid()
        assert note["host"] == socket.gethostname()
        assert note["purpose"] == "install llama.cpp"
        assert note["since"]
        assert describe_owner(lock_path).startswith(f"pid {os.getpid()} on ")
    assert not owner_path(lock_path).exists()


def test_exclusive_lock_is_released_and_the_note_removed_when_the_body_raises(tmp_path: Path) -> None:
    lock_path = tmp_path / "llama.lock"
    with pytest.raises(RuntimeError, match="body failed"), exclusive_lock(lock_path, purpose="x", timeout=1):
        raise RuntimeError("body failed")
    assert not owner_path(lock_path).exists()
    with exclusive_lock(lock_path, purpose="again", timeout=0):  # free at once, no waiting
        pass


def test_exclusive_lock_can_be_taken_again_in_sequence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lock_path = tmp_path / "llama.lock"
    for _ in range(3):
        with exclusive_lock(lock_path, purpose="x", timeout=0):
            pass
    assert "waiting" not in capsys.readouterr().err


def test_a_lock_path_under_a_file_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "locks").write_text("not a directory")
    with pytest.raises(BadInput), exclusive_lock(tmp_path / "locks" / "llama.lock", purpose="x", timeout=0):
        pass


class Holder:
    """Holds the lock from another thread (its own FileLock, so the kernel sees two holders)."""

    def __init__(self, lock_path: Path, purpose: str) -> None:
        self.lock_path = lock_path
        self.purpose = purpose
        self.holding = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with exclusive_lock(self.lock_path, purpose=self.purpose, timeout=5):
                self.holding.set()
                self.release.wait(10)
        except BaseException as exc:
            self.error = exc
            self.holding.set()

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self.holding.wait(10), "the holder never got the lock"
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def lock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "locks" / "bitnet.lock"


def test_a_held_lock_times_out_naming_the_holder(lock_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Holder(lock_path, purpose="build bitnet.cpp for a test"):
        capsys.readouterr()
        with pytest.raises(LockTimeout) as caught, exclusive_lock(lock_path, purpose="install bitnet.cpp", timeout=0.2):
            pytest.fail("the body must not run without the lock")
        err = capsys.readouterr().err
    assert caught.value.exit_code == 1
    assert str(lock_path) in caught.value.message
    assert f"pid {os.getpid()}" in caught.value.message
    assert "build bitnet.cpp for a test" in caught.value.message
    assert "BITNET_LOCK_TIMEOUT" in caught.value.next_step
    waiting = [line for line in err.splitlines() if line.startswith("waiting for the lock")]
    assert len(waiting) == 1
    assert str(lock_path) in waiting[0]
    assert "build bitnet.cpp for a test" in waiting[0]
    assert ", to install bitnet.cpp" in waiting[0]


def test_a_timed_out_waiter_leaves_the_holders_note_alone(lock_path: Path) -> None:
    with Holder(lock_path, purpose="hold"):
        with pytest.raises(LockTimeout), exclusive_lock(lock_path, purpose="wait", timeout=0):
            pass
        assert json.loads(owner_path(lock_path).read_text())["purpose"] == "hold"


def test_a_waiter_gets_the_lock_once_the_holder_lets_go(
    lock_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    said_waiting = threading.Event()
    real_say = ui.say

    def say(message: str, level: ui.Level = "info") -> None:
        real_say(message, level)
        if message.startswith("waiting for the lock"):
            said_waiting.set()

    monkeypatch.setattr(ui, "say", say)
    entered = threading.Event()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            with exclusive_lock(lock_path, purpose="install bitnet.cpp", timeout=10):
                entered.set()
        except BaseException as exc:
            errors.append(exc)

    with Holder(lock_path, purpose="hold") as holder:
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        assert said_waiting.wait(10), "the waiter never said it waits"
        assert not entered.is_set()
        holder.release.set()
    thread.join(10)
    assert not errors, errors
    assert entered.is_set()
    err = capsys.readouterr().err
    assert "got the lock after" in err
    assert not owner_path(lock_path).exists()
