"""Reading a .npy file someone else wrote: only regular files, never blocking, headers checked
against the file's size before anything is allocated, no pickles, no content in the reasons."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import UnreadableArray
from bitnet_crossval.util.npy import read_npy


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int32])
def test_arrays_numpy_writes_are_read_back(tmp_path: Path, order: str, dtype: type) -> None:
    array = np.asarray(np.arange(24).reshape(2, 3, 4), dtype=dtype, order=order)  # type: ignore[call-overload]
    np.save(tmp_path / "a.npy", array)
    back = read_npy(tmp_path / "a.npy")
    assert back.dtype == array.dtype and np.array_equal(back, array)
    back[0, 0, 0] = 7  # writable, like numpy.load's


def test_a_version_2_header_and_an_empty_array(tmp_path: Path) -> None:
    path = tmp_path / "v2.npy"
    with path.open("wb") as handle:
        np.lib.format.write_array(handle, np.ones((2, 2), np.float32), version=(2, 0))
    assert read_npy(path).shape == (2, 2)
    np.save(tmp_path / "empty.npy", np.zeros((0, 5), np.float32))
    assert read_npy(tmp_path / "empty.npy").shape == (0, 5)


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones(3))
    (tmp_path / "link.npy").symlink_to(tmp_path / "a.npy")
    assert read_npy(tmp_path / "link.npy").tolist() == [1.0, 1.0, 1.0]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with_header(path: Path, header: bytes, data: bytes = b"") -> Path:
    padded = header + b" " * (-(10 + len(header) + 1) % 64) + b"\n"
    return _write(path, b"\x93NUMPY\x01\x00" + len(padded).to_bytes(2, "little") + padded + data)


def test_refusals_say_why_in_one_phrase_and_quote_nothing(tmp_path: Path) -> None:
    np.save(tmp_path / "good.npy", np.ones((2, 2), np.float32))
    good = (tmp_path / "good.npy").read_bytes()
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    (tmp_path / "dir.npy").mkdir()
    cases = {
        tmp_path / "missing.npy": "it does not exist",
        _write(tmp_path / "empty.npy", b""): "it is empty",
        _write(
            tmp_path / "secret.npy", b"root:$6$secret-hash:19000:0:99999:7:::\n"
        ): "it is not in NumPy's .npy format",
        _write(tmp_path / "short.npy", good[:-3]): "but the file holds 13 bytes after the header",
        _write(tmp_path / "long.npy", good + b"xx"): "but the file holds 18 bytes after the header",
        _with_header(tmp_path / "huge.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (1 << 62, 4), }"): (
            "its .npy header is not the dictionary the format prescribes"
        ),
        _with_header(
            tmp_path / "exa.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,), }"
        ): (
            "its header describes a float32 array of shape [4611686018427387904] (18446744073709551616 bytes of "
            "data), but the file holds 0 bytes after the header"
        ),
        _with_header(tmp_path / "neg.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"): (
            "its .npy header gives no valid shape"
        ),
        _with_header(tmp_path / "dtype.npy", b"{'descr': 'nonsense', 'fortran_order': False, 'shape': (1,), }"): (
            "its .npy header gives no valid dtype"
        ),
        _write(tmp_path / "version.npy", b"\x93NUMPY\x09\x00" + bytes(10)): "format version 9",
        _write(tmp_path / "claims.npy", b"\x93NUMPY\x02\x00" + (1 << 30).to_bytes(4, "little")): "more than a header",
        tmp_path / "objects.npy": "it holds Python objects (a pickle), which are never loaded",
        tmp_path / "fifo.npy": "it is a FIFO (named pipe), not a regular file",
        tmp_path / "zero.npy": "it is a character device (through a symbolic link), not a regular file",
        tmp_path / "dir.npy": "it is a directory, not a regular file",
    }
    for path, reason in cases.items():
        started = time.monotonic()
        with pytest.raises(UnreadableArray) as raised:
            read_npy(path)
        assert time.monotonic() - started < 5, path  # a FIFO never blocks
        assert reason in raised.value.reason, (path.name, raised.value.reason)
        assert "secret" not in raised.value.reason and "root" not in raised.value.reason


def test_an_array_larger_than_allowed_is_refused_before_it_is_read(tmp_path: Path) -> None:
    np.save(tmp_path / "big.npy", np.zeros((100, 100), np.float64))
    assert read_npy(tmp_path / "big.npy", max_bytes=80_000).shape == (100, 100)
    with pytest.raises(UnreadableArray) as raised:
        read_npy(tmp_path / "big.npy", max_bytes=79_999)
    assert (
        raised.value.reason == "it holds a float64 array of shape [100, 100], 80000 bytes, more than the 79999 expected"
    )
