from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.marker import MARKER_NAME, InstallMarker, marker_path, read_marker, write_marker

COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    source = {"kind": "git", "location": "https://example.invalid/llama.cpp", "commit": COMMIT}
    written = write_marker(
        tmp_path,
        backend="llama",
        source=source,
        build_flags=["-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release"],
        build_dir=tmp_path / "build",
    )
    assert marker_path(tmp_path) == tmp_path / MARKER_NAME
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER_NAME]  # no temp file left
    read = read_marker(tmp_path)
    assert read == written
    assert read is not None
    assert read.backend == "llama"
    assert dict(read.source) == source
    assert read.build_flags == ("-DBUILD_SHARED_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release")
    assert read.build_dir == str(tmp_path / "build")
    assert read.installed_at  # stamped when written
    assert read.commit == COMMIT


def test_the_marker_is_plain_json_with_lists(tmp_path: Path) -> None:
    write_marker(tmp_path, backend="bitnet", source={"kind": "local"}, build_flags=["-DX=1"], build_dir=tmp_path)
    document = json.loads((tmp_path / MARKER_NAME).read_text())
    assert document["backend"] == "bitnet"
    assert document["source"] == {"kind": "local"}
    assert document["build_flags"] == ["-DX=1"]


def test_rewriting_replaces_the_marker(tmp_path: Path) -> None:
    write_marker(tmp_path, backend="llama", source={"commit": "a" * 40}, build_flags=[], build_dir=tmp_path)
    write_marker(tmp_path, backend="llama", source={"commit": "b" * 40}, build_flags=[], build_dir=tmp_path)
    read = read_marker(tmp_path)
    assert read is not None and read.commit == "b" * 40


def test_writing_over_a_directory_named_like_the_marker_is_refused(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).mkdir()
    with pytest.raises(BadInput, match="install marker"):
        write_marker(tmp_path, backend="llama", source={}, build_flags=[], build_dir=tmp_path)
    assert (tmp_path / MARKER_NAME).is_dir()


def test_a_missing_marker_or_directory_reads_as_none(tmp_path: Path) -> None:
    assert read_marker(tmp_path) is None
    assert read_marker(tmp_path / "does-not-exist") is None


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"backend": "llama", "source": {"comm',  # truncated
        b"\xff\xfe\x00 not utf-8",
        b"not json at all",
        b"[1, 2, 3]",
        b'"llama"',
        b"null",
        b'{"source": {"commit": "abc"}}',  # no backend
        b'{"backend": ""}',
        b'{"backend": 3}',
        b'{"backend": ["llama"]}',
        b"[" * 100_000 + b"]" * 100_000,  # absurdly nested
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
)
def test_a_garbled_or_foreign_marker_reads_as_none(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MARKER_NAME).write_bytes(content)
    assert read_marker(tmp_path) is None


def test_a_directory_in_place_of_the_marker_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).mkdir()
    assert read_marker(tmp_path) is None


def test_a_partial_marker_gets_safe_defaults(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).write_text('{"backend": "bitnet"}')
    read = read_marker(tmp_path)
    assert read == InstallMarker(backend="bitnet")
    assert read is not None
    assert read.commit == ""
    assert read.label() == "?"


def test_fields_of_the_wrong_type_are_dropped_or_stringified(tmp_path: Path) -> None:
    document = {
        "backend": "llama",
        "source": {"commit": 12, "nested": {"a": 1}},
        "build_flags": [1, "-DX=ON", None],
        "installed_at": 1700000000,
        "build_dir": None,
        "unknown_future_field": {"x": 1},
    }
    (tmp_path / MARKER_NAME).write_text(json.dumps(document))
    read = read_marker(tmp_path)
    assert read is not None
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in read.source.items())
    assert read.commit == "12"
    assert all(isinstance(flag, str) for flag in read.build_flags)
    assert "-DX=ON" in read.build_flags
    assert isinstance(read.installed_at, str) and isinstance(read.build_dir, str)


@pytest.mark.parametrize(
    ("source", "flags"), [("a string", "-DX=ON"), ([["kind", "git"]], {"-DX": "ON"}), (None, None)]
)
def test_a_source_or_flags_of_the_wrong_shape_become_empty(tmp_path: Path, source: object, flags: object) -> None:
    (tmp_path / MARKER_NAME).write_text(json.dumps({"backend": "llama", "source": source, "build_flags": flags}))
    read = read_marker(tmp_path)
    assert read is not None
    assert dict(read.source) == {}
    assert read.build_flags == ()


@pytest.mark.parametrize(
    ("source", "label"),
    [
        ({"kind": "git", "location": "https://x.invalid/repo", "commit": COMMIT}, COMMIT),
        ({"kind": "archive", "location": "/tmp/llama.tar.gz", "sha256": "ab" * 32}, "/tmp/llama.tar.gz"),
        ({"kind": "git", "location": "https://x.invalid/repo", "commit": ""}, "https://x.invalid/repo"),
        ({"kind": "local"}, "?"),
        ({}, "?"),
    ],
)
def test_label_prefers_the_commit_then_the_location(source: dict[str, str], label: str) -> None:
    assert InstallMarker(backend="llama", source=source).label() == label


def _unblock_fifo_reader(fn, fifo: Path, *, patience: float = 5.0) -> tuple[bool, list[object]]:
    """Run ``fn`` in a thread; if it is still running after ``patience`` seconds (blocked opening
    ``fifo`` for reading), open the FIFO for writing so it can go on. Returns (blocked, [result]).
    The patience costs nothing unless the call blocks, so it can be long enough for a loaded machine."""
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(fn()), daemon=True)
    thread.start()
    thread.join(patience)
    blocked = thread.is_alive()
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # no reader (yet, or any more)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(0.05)
    assert not thread.is_alive(), "still blocked even after the FIFO was opened for writing"
    return blocked, outcome


def test_a_fifo_in_place_of_the_marker_reads_as_none_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / MARKER_NAME
    os.mkfifo(fifo)
    blocked, outcome = _unblock_fifo_reader(lambda: read_marker(tmp_path), fifo)
    assert outcome == [None]
    assert not blocked, "read_marker blocked on a FIFO"
