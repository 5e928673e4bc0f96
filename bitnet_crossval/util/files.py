"""File-system operations that never leave half-written state, and the one translation of
``OSError`` into the suite's errors (a permission problem is exit 4, wherever it happens)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from bitnet_crossval.errors import BadInput, PermissionDenied, UnclassifiedError

PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG})


def os_error(exc: OSError, path: Path) -> PermissionDenied | UnclassifiedError:
    """The suite's error for an OSError on ``path`` (permission problems are exit 4)."""
    if exc.errno in PERMISSION_ERRNOS:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return PermissionDenied(f"cannot write to {path}: {reason}")
    if exc.errno in FULL_ERRNOS:
        return UnclassifiedError(
            f"cannot write to {path}: {exc.strerror or os.strerror(exc.errno or 0)}",
            next_step=f"free space on the file system that holds {path} (or raise the quota)",
        )
    return UnclassifiedError(f"cannot write to {path}: {exc.strerror or exc}")


def make_dir(path: Path) -> None:
    """Create ``path`` and its parents; an existing non-directory there is named, not overwritten."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise BadInput(
            f"{path} exists and is not a directory",
            next_step="move that file away, or point the suite at another directory",
        ) from exc
    except NotADirectoryError as exc:
        raise BadInput(
            f"cannot create {path}: a part of that path is a file, not a directory",
            next_step="move that file away, or point the suite at another directory",
        ) from exc
    except OSError as exc:
        raise os_error(exc, path) from exc


def ensure_writable(directory: Path) -> None:
    """Prove ``directory`` takes new files (an immutable or read-only directory, or one owned by
    another user, is exit 4 here rather than a confusing failure of a tool that writes there)."""
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".bitnet-write-check-"):
            pass
    except OSError as exc:
        raise os_error(exc, directory) from exc


def refuse_non_regular(path: Path, *, what: str) -> None:
    """Refuse to write ``path`` when something other than a regular file is there.

    Renaming over a device node or a FIFO would replace it (``/dev/null`` becomes a JSON
    file when run as root), and opening a FIFO blocks until a reader comes: neither is ever
    what a user meant by naming an output file.
    """
    mode = _mode_of(path)
    if mode is None or stat.S_ISREG(mode):
        return
    kind = describe_file_type(mode)
    raise BadInput(
        f"{what} {path} is {kind}, not a regular file, so the suite will not write to it",
        next_step="name a regular file (or a path that does not exist yet)",
    )


def _mode_of(path: Path) -> int | None:
    """``path``'s own mode (a symlink is not followed), None when nothing is there."""
    try:
        return path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(exc, path) from exc


def describe_file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def write_atomic(path: Path, data: bytes, *, what: str = "the file") -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    The data goes to a fresh temporary file in the same directory (``os.replace`` is atomic only
    within a file system), created exclusively (``mkstemp``: ``O_EXCL``, so a link or a FIFO
    planted at a predictable name is never followed or opened), fsynced, then renamed over
    ``path`` (a rename replaces a name and follows no link); the directory is fsynced after it.
    Refuses a ``path`` that exists and is not a regular file (see :func:`refuse_non_regular`).
    """
    make_dir(path.parent)
    refuse_non_regular(path, what=what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path.parent) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            # On the descriptor, not the name: the name could be swapped for a link meanwhile.
            os.fchmod(handle.fileno(), 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_regular_file(path: Path, *, limit: int | None = None) -> bytes | None:
    """The file's bytes, or None when ``path`` is not a regular file. Opening a FIFO would block
    until a writer comes, and a device is never one of the suite's files; raises OSError (such
    as FileNotFoundError) when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        left = limit
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 16 if left is None else min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left = None if left is None else left - len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json_file(path: Path) -> Any:
    """A small JSON file the suite wrote (a marker, a note, a stamp), or None when it is missing,
    unreadable, not a regular file, not JSON or absurdly nested: such a file is never trusted."""
    try:
        raw = read_regular_file(path)
        return None if raw is None else json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content (raises OSError when it cannot be read)."""
    import hashlib  # imported on use: start-up time matters for a quick preflight

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dump_json(document: Any) -> bytes:
    """``document`` as strict JSON (no NaN or infinity: see :mod:`.jsonsafe`), then a newline."""
    from bitnet_crossval.util.jsonsafe import jsonable

    return (json.dumps(jsonable(document), indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_json_atomic(path: Path, document: Any, *, what: str = "the file") -> None:
    write_atomic(path, dump_json(document), what=what)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not every platform or file system can)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover (file systems that refuse fsync on directories)
        pass
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if it exists (a missing one is fine)."""
    mode = _mode_of(path)
    if mode is None:
        return
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        else:  # a file, a symlink, a FIFO or a device node: removing the name is enough
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise os_error(exc, path) from exc


def copy_file(source: Path, dest: Path, *, keep_symlink: bool = False) -> None:
    """Copy one file (metadata included); a symlink is recreated as a symlink when asked."""
    try:
        if keep_symlink and source.is_symlink():
            dest.symlink_to(source.readlink())
        else:
            shutil.copy2(source, dest)
    except OSError as exc:
        raise os_error(exc, dest) from exc


def move(source: Path, dest: Path) -> None:
    try:
        shutil.move(str(source), dest)
    except OSError as exc:
        raise os_error(exc, dest) from exc


def write_text(path: Path, text: str) -> None:
    """A small note or stamp, written in place (atomicity does not matter for it)."""
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise os_error(exc, path) from exc
