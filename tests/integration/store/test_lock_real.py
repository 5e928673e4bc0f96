"""The per-backend lock across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitnet_crossval.errors import BadInput, LockTimeout
from bitnet_crossval.store.lock import exclusive_lock, lock_timeout_from, owner_path
from tests.helpers import DATA, HANG_SECONDS, wait_for

pytestmark = pytest.mark.integration

HOLDER = DATA / "lock_holder.py"


def _start_holder(
    tmp_path: Path, name: str, lock: Path, timeout: float = HANG_SECONDS
) -> tuple[subprocess.Popen[str], Path, Path]:
    ready, release = tmp_path / f"{name}.ready", tmp_path / f"{name}.release"
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), str(lock), str(ready), str(release), str(timeout)],
        stderr=subprocess.PIPE,
        text=True,
    )
    return holder, ready, release


def _wait_for_line(path: Path, text: str, proc: subprocess.Popen[str], timeout: float = HANG_SECONDS) -> None:
    """Block until ``proc`` has written ``text`` to its stderr file ``path``."""
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, f"the process ended with code {proc.returncode} before saying {text!r}"
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


def test_a_waiter_says_who_holds_the_lock_and_gets_it_after_release(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "llama.lock"
    first, ready1, release1 = _start_holder(tmp_path, "first", lock)
    wait_for(ready1)
    ready2, release2, err_file = tmp_path / "second.ready", tmp_path / "second.release", tmp_path / "second.err"
    with err_file.open("w") as err_handle:
        second = subprocess.Popen(
            [sys.executable, str(HOLDER), str(lock), str(ready2), str(release2), str(HANG_SECONDS)],
            stderr=err_handle,
            text=True,
        )
    # Once it says it waits, it has tried the lock and found it held: only then is "not ready" proof.
    _wait_for_line(err_file, "waiting for the lock", second)
    assert not ready2.exists(), "the second process got a lock that was held"
    release1.touch()
    assert first.wait(timeout=HANG_SECONDS) == 0
    wait_for(ready2)
    release2.touch()
    assert second.wait(timeout=HANG_SECONDS) == 0
    err = err_file.read_text()
    assert f"held by pid {first.pid}" in err
    assert "waiting for the lock" in err and "got the lock after" in err
    assert not owner_path(lock).exists()


def test_sigkill_of_the_holder_frees_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "llama.lock"
    holder, ready, _release = _start_holder(tmp_path, "victim", lock)
    wait_for(ready)
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=HANG_SECONDS) == -signal.SIGKILL
    with exclusive_lock(lock, purpose="test", timeout=0):  # free at the first try: no waiting at all
        pass


def test_timeout_is_a_clear_error(tmp_path: Path) -> None:
    lock = tmp_path / "llama.lock"
    holder, ready, release = _start_holder(tmp_path, "holder", lock)
    wait_for(ready)
    try:
        with pytest.raises(LockTimeout) as info, exclusive_lock(lock, purpose="test", timeout=0.3):
            pass
        assert str(holder.pid) in info.value.message
        assert "BITNET_LOCK_TIMEOUT" in info.value.next_step
        assert info.value.exit_code == 1
    finally:
        release.touch()
        holder.wait(timeout=HANG_SECONDS)


def test_lock_timeout_from_env() -> None:
    assert lock_timeout_from({}) == 3600.0
    assert lock_timeout_from({"BITNET_LOCK_TIMEOUT": "2.5"}) == 2.5
    with pytest.raises(BadInput):
        lock_timeout_from({"BITNET_LOCK_TIMEOUT": "soon"})
    with pytest.raises(BadInput):
        lock_timeout_from({"BITNET_LOCK_TIMEOUT": "-1"})
