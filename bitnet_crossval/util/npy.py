"""Reading a ``.npy`` file someone else wrote (a candidate's logits, its trace), safely.

:func:`numpy.load` opens whatever the path names (a FIFO blocks it forever, a device feeds it
without end), allocates what the header claims before reading (a header may claim exabytes),
and its errors quote the file's first bytes. Here only a regular file is opened, never
blocking; the header is checked against the file's size before any array is allocated; object
arrays (pickles) are refused; and every refusal is one :class:`~bitnet_crossval.errors.UnreadableArray`
whose reason quotes nothing of the file.
"""

from __future__ import annotations

import ast
import math
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import UnreadableArray
from bitnet_crossval.util.files import describe_file_type

MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 16
"""A header longer than this is not one numpy writes (it caps headers at 10 000 bytes to read)."""


def read_npy(path: Path, *, max_bytes: int | None = None) -> npt.NDArray[Any]:
    """The array in ``path``; :class:`UnreadableArray` saying why when there is none to read, or
    when its data is larger than ``max_bytes`` (checked before anything is read)."""
    try:
        mode = os.stat(path).st_mode  # follows a symbolic link: what it names must be a regular file
    except FileNotFoundError:
        raise UnreadableArray(path, "it does not exist") from None
    except OSError as exc:
        raise UnreadableArray(path, f"it cannot be examined ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        via = " (through a symbolic link)" if os.path.islink(path) else ""
        raise UnreadableArray(path, f"it is {describe_file_type(mode)}{via}, not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableArray(path, f"it cannot be opened ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):  # replaced between the two looks
            raise UnreadableArray(path, f"it is {describe_file_type(info.st_mode)}, not a regular file")
        return _read(handle, path, size=info.st_size, max_bytes=max_bytes)


def _read(handle: BinaryIO, path: Path, *, size: int, max_bytes: int | None) -> npt.NDArray[Any]:
    if size == 0:
        raise UnreadableArray(path, "it is empty")
    shape, fortran_order, dtype = _header(handle, path)
    if dtype.hasobject:
        raise UnreadableArray(path, "it holds Python objects (a pickle), which are never loaded")
    n_values = math.prod(shape)
    expected = n_values * dtype.itemsize
    available = size - handle.tell()
    if expected != available:
        shown = "[" + ", ".join(str(d) for d in shape) + "]"
        raise UnreadableArray(
            path,
            f"its header describes a {dtype} array of shape {shown} ({expected} bytes of data), "
            f"but the file holds {available} bytes after the header",
        )
    if max_bytes is not None and expected > max_bytes:
        shown = "[" + ", ".join(str(d) for d in shape) + "]"
        raise UnreadableArray(
            path, f"it holds a {dtype} array of shape {shown}, {expected} bytes, more than the {max_bytes} expected"
        )
    data = bytearray(expected)  # writable, so the array is too
    if cast("Any", handle).readinto(data) != expected:
        raise UnreadableArray(path, "it changed while it was read")
    array = np.frombuffer(data, dtype=dtype, count=n_values)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """Shape, Fortran order and dtype, from a header of format version 1, 2 or 3."""
    start = handle.read(len(MAGIC) + 2)
    if len(start) < len(MAGIC) + 2 or not start.startswith(MAGIC):
        raise UnreadableArray(path, "it is not in NumPy's .npy format")
    major = start[len(MAGIC)]
    length_bytes = {1: 2, 2: 4, 3: 4}.get(major)
    if length_bytes is None:
        raise UnreadableArray(path, f"it has .npy format version {major}, which is not one of 1, 2, 3")
    raw_length = handle.read(length_bytes)
    if len(raw_length) != length_bytes:
        raise UnreadableArray(path, "its .npy header is cut short")
    length = int.from_bytes(raw_length, "little")
    if length > MAX_HEADER:
        raise UnreadableArray(path, f"its .npy header claims {length} bytes, more than a header holds")
    raw = handle.read(length)
    if len(raw) != length:
        raise UnreadableArray(path, "its .npy header is cut short")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        raise UnreadableArray(path, "its .npy header is not the dictionary the format prescribes") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise UnreadableArray(path, "its .npy header is not the dictionary the format prescribes")
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise UnreadableArray(path, "its .npy header gives no valid shape")
    if not isinstance(header["fortran_order"], bool):
        raise UnreadableArray(path, "its .npy header gives no valid fortran_order")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError):
        raise UnreadableArray(path, "its .npy header gives no valid dtype") from None
    return shape, header["fortran_order"], dtype
