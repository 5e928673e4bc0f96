"""One exclusive lock per backend, shared by every process that installs into one cache.

The lock is a kernel ``flock`` (filelock's UnixFileLock): the kernel drops it when its holder
dies, even by SIGKILL, so a crashed setup never wedges the next one. Acquisition first tries
without blocking; if another process holds the lock we say who holds it and what we wait for,
then block with a timeout (cargo ``util/flock.rs``, uv ``locked_file.rs``). filelock silently
switches to a marker-file lock where ``flock`` is unsupported (NFS without locking, some FUSE
mounts); such a lock survives ``kill -9``, so we refuse it instead.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from bitnet_crossval.errors import LockTimeout, UnclassifiedError
from bitnet_crossval.util import ui
from bitnet_crossval.util.envnum import env_float
from bitnet_crossval.util.files import make_dir, os_error, read_json_file

LOCK_TIMEOUT_ENV = "BITNET_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT = 3600.0  # a cold build of a backend takes minutes, not hours


def lock_timeout_from(env: Mapping[str, str]) -> float:
    return env_float(env, LOCK_TIMEOUT_ENV, default=DEFAULT_LOCK_TIMEOUT, example="600")


def owner_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".owner")


def describe_owner(lock_path: Path) -> str:
    """Who holds the lock, from the note its holder wrote after acquiring it."""
    note = read_json_file(owner_path(lock_path))
    try:
        return f"pid {note['pid']} on {note['host']}, since {note['since']} ({note['purpose']})"
    except (KeyError, TypeError):
        return "another process"


@contextmanager
def exclusive_lock(lock_path: Path, *, purpose: str, timeout: float) -> Iterator[None]:
    """Hold the lock at ``lock_path`` for the body of the ``with`` block."""
    import filelock

    make_dir(lock_path.parent)
    lock = filelock.FileLock(lock_path, fallback_to_soft=False)
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            ui.say(f"waiting for the lock {lock_path}: held by {describe_owner(lock_path)}, to {purpose}")
            started = time.monotonic()
            try:
                lock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise LockTimeout(
                    f"gave up after {timeout:.0f}s waiting for the lock {lock_path} "
                    f"(held by {describe_owner(lock_path)})"
                ) from None
            ui.say(f"got the lock after {time.monotonic() - started:.1f}s")
    except PermissionError as exc:
        raise os_error(exc, lock_path) from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            raise UnclassifiedError(
                f"the file system holding {lock_path} does not support flock, so installs cannot be locked safely",
                next_step="point BITNET_CACHE_DIR at a local disk",
            ) from exc
        raise os_error(exc, lock_path) from exc
    try:
        _write_owner_note(lock_path, purpose)
        yield
    finally:
        owner_path(lock_path).unlink(missing_ok=True)
        lock.release()


def _write_owner_note(lock_path: Path, purpose: str) -> None:
    import socket

    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "purpose": purpose,
        "argv": sys.argv,
    }
    # Best effort: the note only improves the "waiting for" message.
    try:
        owner_path(lock_path).write_text(json.dumps(note), encoding="utf-8")
    except OSError as exc:  # pragma: no cover (lock dir became unwritable after locking)
        ui.debug(f"could not write the lock owner note: {exc}")
