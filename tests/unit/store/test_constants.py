from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bitnet_crossval.store.constants import (
    SCHEMA,
    SCHEMA_VERSION,
    BackendRecord,
    is_current,
    read_constants,
    write_constants,
)


def _records() -> dict[str, BackendRecord]:
    return {
        "llama": BackendRecord(
            available=True,
            origin="cache",
            install_dir="/c/installs/llama",
            lib_dir="/c/installs/llama/lib",
            include_dirs=["/c/installs/llama/include"],
            source={"kind": "pypi", "commit": "0c1e57098bba43ac29e6e3b677cdceebdd22334f"},
            build_flags=["-DBUILD_SHARED_LIBS=ON"],
            shim="/c/builds/shim/bitnet-shim",
            shim_api="current",
        ),
        "bitnet": BackendRecord(available=False, reason="not installed", origin="cache"),
    }


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    assert write_constants(path, _records()) is True
    loaded = read_constants(path)
    assert loaded.status == "ok"
    assert loaded.has("llama") and not loaded.has("bitnet")
    llama = loaded.record("llama")
    assert llama is not None
    assert llama.without_timestamp() == _records()["llama"].without_timestamp()
    assert llama.detected_at  # stamped on write
    document = json.loads(path.read_text())
    assert document["schema"] == SCHEMA and document["version"] == SCHEMA_VERSION


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    write_constants(path, _records())
    before = path.read_bytes()
    os.utime(path, (1, 1))
    assert write_constants(path, _records()) is False
    assert path.read_bytes() == before
    assert path.stat().st_mtime == 1  # not touched at all
    assert is_current(path, _records())


def test_changed_content_is_rewritten_and_keeps_unchanged_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    write_constants(path, _records())
    first = read_constants(path)
    changed = dict(_records())
    changed["bitnet"] = BackendRecord(available=False, reason="something else", origin="cache")
    assert not is_current(path, changed)
    assert write_constants(path, changed) is True
    second = read_constants(path)
    assert second.record("bitnet").reason == "something else"  # type: ignore[union-attr]
    assert second.record("llama").detected_at == first.record("llama").detected_at  # type: ignore[union-attr]


def test_write_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "constants.json"
    write_constants(path, _records())
    assert sorted(p.name for p in path.parent.iterdir()) == ["constants.json"]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (None, "missing"),
        (b"", "corrupt"),
        (b'{"schema": "bitnet-suite/constants", "version": 1, "backends": {"llama": {"avail', "corrupt"),
        (b"\xff\xfe\x00garbage", "corrupt"),
        (b'{"hello": "world"}', "foreign"),
        (b"[1, 2, 3]", "foreign"),
        (b"import os; os.system('rm -rf /')", "corrupt"),
        (json.dumps({"schema": SCHEMA, "version": 99, "backends": {}}).encode(), "unsupported-version"),
        (json.dumps({"schema": SCHEMA, "version": 1, "backends": []}).encode(), "corrupt"),
        (
            json.dumps({"schema": SCHEMA, "version": 1, "backends": {"llama": {"available": "yes"}}}).encode(),
            "corrupt",
        ),
        (
            json.dumps(
                {"schema": SCHEMA, "version": 1, "backends": {"llama": {"available": True, "lib_dir": 3}}}
            ).encode(),
            "corrupt",
        ),
    ],
)
def test_bad_files_mean_detect_again(tmp_path: Path, content: bytes | None, status: str) -> None:
    path = tmp_path / "constants.json"
    if content is not None:
        path.write_bytes(content)
    loaded = read_constants(path)
    assert loaded.status == status
    assert loaded.problem
    assert not loaded.has("llama")


def test_a_truncated_file_is_replaced_by_a_write(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    path.write_text('{"schema": "bitnet-suite/constants", "ver')
    assert write_constants(path, _records()) is True
    assert read_constants(path).status == "ok"


def test_a_directory_in_place_of_the_file_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    path.mkdir()
    assert read_constants(path).status == "unreadable"
