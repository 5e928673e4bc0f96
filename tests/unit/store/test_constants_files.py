"""The constants file against odd files on disk (FIFOs, directories, devices, absurd nesting),
the shim check and ``--check``; the plain round trips are in test_constants.py."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.constants import (
    SCHEMA,
    SCHEMA_VERSION,
    BackendRecord,
    Constants,
    is_current,
    read_constants,
    shim_problem,
    write_constants,
)


def records(shim: str | None = "/c/builds/shim/bitnet-shim") -> dict[str, BackendRecord]:
    return {
        "llama": BackendRecord(
            available=True,
            origin="cache",
            install_dir="/c/installs/llama",
            lib_dir="/c/installs/llama/lib",
            include_dirs=["/c/installs/llama/include"],
            shim=shim,
            shim_api="current",
        ),
        "bitnet": BackendRecord(available=False, reason="not installed", origin="cache"),
    }


def read_in_thread(path: Path, *, patience: float = 5.0) -> Constants:
    """read_constants in a thread, so a read that blocks fails the test instead of hanging it."""
    result: list[Constants] = []
    thread = threading.Thread(target=lambda: result.append(read_constants(path)), daemon=True)
    thread.start()
    thread.join(patience)
    if thread.is_alive():
        # Let the blocked open go on (a writer appears), then fail.
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"read_constants blocked on {path}")
    return result[0]


# --- reading files that are not constants files ---------------------------------------------------


def test_a_fifo_is_unreadable_and_reading_it_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    os.mkfifo(path)
    loaded = read_in_thread(path)
    assert loaded.status == "unreadable"
    assert "not a regular file" in loaded.problem
    assert not loaded.has("llama")


def test_a_fifo_is_not_current_and_is_not_written_over(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    os.mkfifo(path)
    assert is_current(path, records()) is False
    with pytest.raises(BadInput, match="FIFO"):
        write_constants(path, records())
    assert path.is_fifo()


def test_a_directory_is_unreadable_not_current_and_not_written_over(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    path.mkdir()
    (path / "inside").write_text("x")
    loaded = read_constants(path)
    assert loaded.status == "unreadable"
    assert loaded.problem
    assert is_current(path, records()) is False
    with pytest.raises(BadInput, match="a directory"):
        write_constants(path, records())
    assert (path / "inside").read_text() == "x"


def test_a_character_device_is_unreadable() -> None:
    devnull = Path(os.devnull)
    if not devnull.exists():  # pragma: no cover
        pytest.skip("no null device")
    assert read_constants(devnull).status == "unreadable"
    assert is_current(devnull, records()) is False


def test_a_symlink_to_a_good_file_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    write_constants(real, records())
    link = tmp_path / "constants.json"
    link.symlink_to(real)
    assert read_constants(link).status == "ok"


@pytest.mark.parametrize(
    "document",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"schema": "bitnet-suite/constants", "version": 1, "backends": {"llama": '
        + "[" * 100_000
        + "]" * 100_000
        + "}}",
    ],
)
def test_a_deeply_nested_document_is_corrupt_not_a_crash(tmp_path: Path, document: str) -> None:
    path = tmp_path / "constants.json"
    path.write_text(document)
    loaded = read_constants(path)
    assert loaded.status == "corrupt"
    assert loaded.problem
    assert is_current(path, records()) is False
    assert write_constants(path, records()) is True  # damage is replaced by a rebuild
    assert read_constants(path).status == "ok"


def test_an_unreadable_file_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "constants.json"
    write_constants(path, records())
    real_open = os.open

    def refuse(p: str | os.PathLike[str], flags: int, mode: int = 0o777) -> int:
        if os.fspath(p) == str(path):
            raise PermissionError(13, "Permission denied")
        return real_open(p, flags, mode)

    monkeypatch.setattr(os, "open", refuse)
    loaded = read_constants(path)
    assert loaded.status == "unreadable"
    assert "Permission denied" in loaded.problem
    assert is_current(path, records()) is False


# --- is_current --------------------------------------------------------------------------------


def test_a_missing_file_is_not_current(tmp_path: Path) -> None:
    assert is_current(tmp_path / "constants.json", records()) is False


def test_is_current_after_a_write_and_not_after_a_change(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    write_constants(path, records())
    before = path.read_bytes()
    assert is_current(path, records()) is True
    changed = records()
    changed["bitnet"] = BackendRecord(available=True, origin="BITNET_CPP_DIR", lib_dir="/elsewhere/lib")
    assert is_current(path, changed) is False
    fewer = {"llama": records()["llama"]}
    assert is_current(path, fewer) is False
    assert path.read_bytes() == before  # --check never writes


def test_is_current_ignores_the_order_records_come_in(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    write_constants(path, records())
    reordered = dict(reversed(list(records().items())))
    assert is_current(path, reordered) is True


def test_a_hand_edited_but_equivalent_file_is_not_current(tmp_path: Path) -> None:
    # --check compares bytes: a reformatted file would be rewritten by a rebuild.
    path = tmp_path / "constants.json"
    write_constants(path, records())
    path.write_text(json.dumps(json.loads(path.read_text())))  # same data, other layout
    assert read_constants(path).status == "ok"
    assert is_current(path, records()) is False


def test_a_newer_schema_is_not_current(tmp_path: Path) -> None:
    path = tmp_path / "constants.json"
    path.write_text(json.dumps({"schema": SCHEMA, "version": SCHEMA_VERSION + 1, "backends": {}}))
    assert is_current(path, records()) is False


# --- shim_problem ----------------------------------------------------------------------------


def make_shim(tmp_path: Path, content: bytes = b"\x7fELF a shim", mode: int = 0o755) -> Path:
    shim = tmp_path / "bitnet-shim"
    shim.write_bytes(content)
    shim.chmod(mode)
    return shim


def record_for(shim: Path | str | None, sha256: str | None = None) -> BackendRecord:
    return BackendRecord(available=True, shim=None if shim is None else str(shim), shim_sha256=sha256)


def test_the_shim_that_was_built_has_no_problem(tmp_path: Path) -> None:
    shim = make_shim(tmp_path)
    assert shim_problem(record_for(shim, hashlib.sha256(shim.read_bytes()).hexdigest())) is None


def test_a_record_without_a_hash_checks_existence_only(tmp_path: Path) -> None:
    shim = make_shim(tmp_path, b"anything at all")
    assert shim_problem(record_for(shim, None)) is None


def test_no_shim_recorded() -> None:
    problem = shim_problem(record_for(None))
    assert problem is not None and "no shim" in problem


def test_a_missing_shim(tmp_path: Path) -> None:
    problem = shim_problem(record_for(tmp_path / "gone", "0" * 64))
    assert problem is not None
    assert "does not exist" in problem and str(tmp_path / "gone") in problem


def test_a_dangling_symlink_as_shim_does_not_exist(tmp_path: Path) -> None:
    link = tmp_path / "bitnet-shim"
    link.symlink_to(tmp_path / "nowhere")
    problem = shim_problem(record_for(link))
    assert problem is not None and "does not exist" in problem


def test_a_changed_shim(tmp_path: Path) -> None:
    shim = make_shim(tmp_path, b"the binary that was built")
    digest = hashlib.sha256(shim.read_bytes()).hexdigest()
    shim.write_bytes(b"another program in its place")
    problem = shim_problem(record_for(shim, digest))
    assert problem is not None and "content changed" in problem


def test_a_truncated_shim(tmp_path: Path) -> None:
    shim = make_shim(tmp_path, b"the binary that was built")
    digest = hashlib.sha256(shim.read_bytes()).hexdigest()
    with shim.open("r+b") as handle:
        handle.truncate(5)
    problem = shim_problem(record_for(shim, digest))
    assert problem is not None and "content changed" in problem


def test_a_shim_that_is_not_executable(tmp_path: Path) -> None:
    shim = make_shim(tmp_path, mode=0o644)
    problem = shim_problem(record_for(shim, hashlib.sha256(shim.read_bytes()).hexdigest()))
    assert problem is not None and "not executable" in problem


def test_a_directory_as_shim(tmp_path: Path) -> None:
    shim = tmp_path / "bitnet-shim"
    shim.mkdir()
    problem = shim_problem(record_for(shim, "0" * 64))
    assert problem is not None and "a directory" in problem


def test_a_fifo_as_shim_is_named_without_blocking(tmp_path: Path) -> None:
    shim = tmp_path / "bitnet-shim"
    os.mkfifo(shim)
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(shim_problem(record_for(shim, "0" * 64))), daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        os.close(os.open(shim, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("shim_problem blocked on a FIFO")
    assert result[0] is not None and "FIFO" in result[0]


def test_an_unreadable_shim_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bitnet_crossval.store import constants

    shim = make_shim(tmp_path)

    def unreadable(path: Path) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(constants, "file_sha256", unreadable)
    problem = shim_problem(record_for(shim, "0" * 64))
    assert problem is not None and "cannot be read" in problem and "Permission denied" in problem
