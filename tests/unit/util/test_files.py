from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bitnet_crossval.errors import BadInput, PermissionDenied, UnclassifiedError
from bitnet_crossval.util.files import (
    copy_file,
    file_sha256,
    make_dir,
    os_error,
    read_json_file,
    read_regular_file,
    refuse_non_regular,
    remove_tree,
    write_atomic,
    write_json_atomic,
)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- write_atomic ------------------------------------------------------------------------------


def test_write_atomic_creates_the_file_and_its_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.bin"
    write_atomic(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert entries(target.parent) == ["out.bin"]  # no temp file left behind
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_write_atomic_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"old content")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert entries(tmp_path) == ["out.txt"]


def test_a_failed_write_leaves_the_old_content_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"old content")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(UnclassifiedError) as caught:
        write_atomic(target, b"new content that never lands")
    assert caught.value.exit_code == 1
    assert "No space left on device" in caught.value.message
    assert target.read_bytes() == b"old content"
    assert entries(tmp_path) == ["out.txt"]


def test_an_interrupted_write_removes_the_temp_file_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_bytes(b"old")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert entries(tmp_path) == ["out.txt"]


def test_a_permission_error_on_rename_is_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"

    def denied(src: object, dst: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(PermissionDenied) as caught:
        write_atomic(target, b"x")
    assert caught.value.exit_code == 4
    assert str(target) in caught.value.message
    assert entries(tmp_path) == []


def test_a_permission_error_creating_the_temp_file_is_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(**kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(PermissionDenied) as caught:
        write_atomic(tmp_path / "out.txt", b"x")
    assert caught.value.exit_code == 4
    assert str(tmp_path) in caught.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_exit_4(tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionDenied):
            write_atomic(locked / "out.txt", b"x")
    finally:
        locked.chmod(0o755)


def test_write_json_atomic_writes_sorted_indented_json(tmp_path: Path) -> None:
    target = tmp_path / "doc.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _make_dir(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_text("keep me")


def _make_symlink(path: Path) -> None:
    real = path.parent / "real-target"
    real.write_text("the real file")
    path.symlink_to(real)


def _make_dangling_symlink(path: Path) -> None:
    path.symlink_to(path.parent / "nowhere")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (_make_fifo, "a FIFO"),
        (_make_dir, "a directory"),
        (_make_symlink, "a symbolic link"),
        (_make_dangling_symlink, "a symbolic link"),
    ],
)
def test_write_atomic_refuses_a_non_regular_file_and_leaves_it_alone(tmp_path: Path, make, kind: str) -> None:
    target = tmp_path / "out.json"
    make(target)
    before = target.lstat()
    listing = entries(tmp_path)
    with pytest.raises(BadInput) as caught:
        write_atomic(target, b"{}", what="the output file")
    assert caught.value.exit_code == 6
    assert f"the output file {target} is {kind}" in caught.value.message
    after = target.lstat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert entries(tmp_path) == listing  # nothing added, nothing replaced
    if kind == "a directory":
        assert (target / "inside").read_text() == "keep me"
    if target.is_symlink() and target.exists():
        assert target.read_text() == "the real file"


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_write_atomic_refuses_a_device_node(tmp_path: Path) -> None:
    device = tmp_path / "null-copy"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
    with pytest.raises(BadInput, match="a character device"):
        write_atomic(device, b"{}")
    assert stat.S_ISCHR(device.lstat().st_mode)


def test_refuse_non_regular_accepts_a_regular_file_and_a_missing_path(tmp_path: Path) -> None:
    regular = tmp_path / "f"
    regular.write_text("x")
    refuse_non_regular(regular, what="the file")
    refuse_non_regular(tmp_path / "missing", what="the file")


def test_refuse_non_regular_names_a_socket(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        with pytest.raises(BadInput, match=r"the log .* is a socket"):
            refuse_non_regular(path, what="the log")


def test_refuse_non_regular_translates_a_lookup_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # lstat of file/child fails with ENOTDIR, which is neither "missing" nor a permission problem.
    with pytest.raises(UnclassifiedError):
        refuse_non_regular(blocker / "child", what="the file")


# --- make_dir ------------------------------------------------------------------------------------


def test_make_dir_creates_parents_and_accepts_an_existing_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    make_dir(target)
    make_dir(target)
    assert target.is_dir()


def test_make_dir_under_a_regular_file_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("precious")
    with pytest.raises(BadInput) as caught:
        make_dir(blocker / "sub" / "deeper")
    assert caught.value.exit_code == 6
    assert "is a file, not a directory" in caught.value.message
    assert blocker.read_text() == "precious"


def test_make_dir_on_an_existing_file_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("precious")
    with pytest.raises(BadInput, match="exists and is not a directory"):
        make_dir(blocker)
    assert blocker.read_text() == "precious"


def test_make_dir_translates_a_permission_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", denied)
    with pytest.raises(PermissionDenied):
        make_dir(tmp_path / "x")


# --- remove_tree ------------------------------------------------------------------------------


def test_remove_tree_removes_a_directory_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    remove_tree(tree)
    assert not tree.exists()


def test_remove_tree_removes_a_file_and_accepts_a_missing_path(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    remove_tree(f)
    remove_tree(f)
    assert not f.exists()


def test_remove_tree_removes_a_symlink_but_not_what_it_points_at(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    remove_tree(link)
    remove_tree(dangling)
    assert not link.is_symlink() and not dangling.is_symlink()
    assert (target / "keep").read_text() == "x"


def call_unblocking_fifo(fn, fifo: Path, *, patience: float = 5.0) -> tuple[bool, BaseException | None]:
    """Run ``fn`` in a thread; if it is still running after ``patience`` seconds (blocked opening
    ``fifo`` for reading), open the FIFO for writing so it can go on. Returns (blocked, error).
    The patience costs nothing unless the call blocks (the join ends with the thread), so it can be
    long enough for a loaded machine."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(patience)
    blocked = thread.is_alive()
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # no reader (yet, or any more)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(0.05)
    assert not thread.is_alive(), "the call stayed blocked even after the FIFO was opened for writing"
    return blocked, outcome[0]


def test_remove_tree_removes_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    blocked, error = call_unblocking_fifo(lambda: remove_tree(fifo), fifo)
    assert not blocked, "remove_tree blocked on the FIFO"
    assert error is None
    assert not os.path.lexists(fifo)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_remove_tree_removes_a_device_node_by_name(tmp_path: Path) -> None:
    device = tmp_path / "null-copy"
    os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    remove_tree(device)
    assert not os.path.lexists(device)
    assert os.path.exists(os.devnull)


def test_remove_tree_under_a_file_is_a_suite_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UnclassifiedError):
        remove_tree(blocker / "child")
    assert blocker.read_text() == "x"


# --- read_regular_file and read_json_file ------------------------------------------------------


def test_read_regular_file_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = bytes(range(256)) * 1000  # more than one read's worth
    path.write_bytes(data)
    assert read_regular_file(path) == data
    (tmp_path / "empty").write_bytes(b"")
    assert read_regular_file(tmp_path / "empty") == b""


def test_read_regular_file_follows_a_symlink_to_a_file(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert read_regular_file(tmp_path / "link") == b"x"


def test_read_regular_file_refuses_a_directory_and_a_fifo_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert read_regular_file(tmp_path / "dir") is None
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    blocked, error = call_unblocking_fifo(lambda: read_regular_file(fifo), fifo)
    assert not blocked and error is None


def test_read_regular_file_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing")


def test_read_json_file_reads_json(tmp_path: Path) -> None:
    path = tmp_path / "doc.json"
    write_json_atomic(path, {"a": [1, 2], "b": None})
    assert read_json_file(path) == {"a": [1, 2], "b": None}


@pytest.mark.parametrize(
    "content",
    [b"", b'{"a": ', b"\xff\xfe not utf-8", b"nope", b"[" * 100_000 + b"]" * 100_000],
)
def test_read_json_file_of_damage_is_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(content)
    assert read_json_file(path) is None


def test_read_json_file_of_what_is_not_a_file_is_none(tmp_path: Path) -> None:
    assert read_json_file(tmp_path / "missing") is None
    (tmp_path / "dir").mkdir()
    assert read_json_file(tmp_path / "dir") is None
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result: list[object] = []
    blocked, error = call_unblocking_fifo(lambda: result.append(read_json_file(fifo)), fifo)
    assert not blocked and error is None and result == [None]


# --- copy_file --------------------------------------------------------------------------------


def test_copy_file_copies_content_and_mode(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"payload")
    source.chmod(0o751)
    dest = tmp_path / "dest"
    copy_file(source, dest)
    assert dest.read_bytes() == b"payload"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o751
    assert not dest.is_symlink()


def test_copy_file_keep_symlink_recreates_the_link_with_the_same_target(tmp_path: Path) -> None:
    (tmp_path / "libx.so.1").write_bytes(b"real")
    link = tmp_path / "libx.so"
    link.symlink_to("libx.so.1")  # relative, as library symlinks are
    out = tmp_path / "out"
    out.mkdir()
    copy_file(link, out / "libx.so", keep_symlink=True)
    assert (out / "libx.so").is_symlink()
    assert os.readlink(out / "libx.so") == "libx.so.1"


def test_copy_file_without_keep_symlink_copies_the_content(tmp_path: Path) -> None:
    (tmp_path / "libx.so.1").write_bytes(b"real")
    link = tmp_path / "libx.so"
    link.symlink_to("libx.so.1")
    out = tmp_path / "out"
    out.mkdir()
    copy_file(link, out / "libx.so")
    assert not (out / "libx.so").is_symlink()
    assert (out / "libx.so").read_bytes() == b"real"


def test_copy_file_keep_symlink_on_a_regular_file_copies_it(tmp_path: Path) -> None:
    source = tmp_path / "plain"
    source.write_text("x")
    copy_file(source, tmp_path / "copy", keep_symlink=True)
    assert (tmp_path / "copy").read_text() == "x"
    assert not (tmp_path / "copy").is_symlink()


def test_copy_file_of_a_missing_source_is_a_suite_error(tmp_path: Path) -> None:
    with pytest.raises(UnclassifiedError):
        copy_file(tmp_path / "missing", tmp_path / "dest")


# --- os_error ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_permission_errnos_are_exit_4(code: int, tmp_path: Path) -> None:
    error = os_error(OSError(code, os.strerror(code)), tmp_path / "x")
    assert isinstance(error, PermissionDenied)
    assert error.exit_code == 4
    assert str(tmp_path / "x") in error.message
    assert os.strerror(code) in error.message


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.ENOENT, errno.EISDIR, None])
def test_other_os_errors_are_exit_1(code: int | None, tmp_path: Path) -> None:
    exc = OSError(code, os.strerror(code)) if code is not None else OSError("something odd")
    error = os_error(exc, tmp_path / "x")
    assert isinstance(error, UnclassifiedError)
    assert not isinstance(error, PermissionDenied)
    assert error.exit_code == 1
    assert str(tmp_path / "x") in error.message
    assert (os.strerror(code) if code is not None else "something odd") in error.message


# --- file_sha256 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 17])
def test_file_sha256_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_file_sha256_of_a_missing_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_file_system_says_to_free_space_there(code: int, tmp_path: Path) -> None:
    error = os_error(OSError(code, os.strerror(code)), tmp_path / "x")
    assert type(error) is UnclassifiedError
    assert error.message == f"cannot write to {tmp_path / 'x'}: {os.strerror(code)}"
    assert error.next_step.startswith(f"free space on the file system that holds {tmp_path / 'x'}")


# --- write_atomic never follows what sits at a name it did not create ------------------------------


def test_write_atomic_sets_the_mode_on_its_own_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod by name would follow a link swapped in for the temporary file; fchmod cannot."""
    by_name: list[object] = []
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: by_name.append(args))
    write_atomic(tmp_path / "out.json", b"{}\n")
    assert by_name == []
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o644


def test_write_atomic_creates_its_temporary_file_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever name the temporary file gets, it did not exist: a link planted there would make the
    exclusive create fail rather than be followed."""
    opened: list[int] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kwargs: object) -> int:
        if Path(path).parent == tmp_path:
            opened.append(flags)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    write_atomic(tmp_path / "out.json", b"{}\n")
    creates = [flags for flags in opened if flags & os.O_CREAT]
    assert creates and all(flags & os.O_EXCL for flags in creates)
