"""A GGUF file's container, byte for byte: where its metadata, tensor directory and data lie,
and writing a new file that keeps one file's metadata bytes while taking tensor data from
several files.

This is the layer below gguf-py: nothing is decoded except what locating the parts needs
(the key-value section is walked, not parsed into values, apart from ``general.alignment``,
``general.architecture`` and ``split.count``). So a file written here carries its source's
metadata as the very same bytes, and tensors whose type no Python library knows
(microsoft/BitNet's I2_S) are located and copied all the same.

The format (ggml's ``gguf.h``): ``GGUF``, version (u32), tensor count (u64), key-value count
(u64); the key-value pairs; per tensor its name, ``n_dims`` (u32), ``ne`` (u64 each), type (u32)
and data offset (u64, relative to the data section); padding to the alignment; the data, each
tensor starting at a multiple of the alignment.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BadInput

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT

# ggml type ids of the tensors that are not quantised: floats, and the plain integers.
F32, F16, BF16 = 0, 1, 30
FLOAT_TYPE_IDS: dict[str, int] = {"F32": F32, "F16": F16, "BF16": BF16}
_PLAIN_ELEMENT_BYTES: dict[int, int] = {F32: 4, F16: 2, BF16: 2, 24: 1, 25: 2, 26: 4, 27: 8, 28: 8}

# GGUF value types and the sizes of the fixed-size ones.
_STRING, _ARRAY = 8, 9
_UINT32 = 4
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INTEGER_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}

_COPY_CHUNK = 1 << 24


@dataclass(frozen=True, kw_only=True)
class TensorEntry:
    """One entry of the tensor directory: ``ne`` in ggml's order, ``offset`` absolute in the file."""

    name: str
    ne: tuple[int, ...]
    type_id: int
    offset: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))

    @property
    def is_plain(self) -> bool:
        """Not quantised: a float (F32, F16, BF16) or a plain integer/F64 tensor."""
        return self.type_id in _PLAIN_ELEMENT_BYTES

    def plain_nbytes(self) -> int:
        """The data size of a tensor that is not quantised."""
        return self.n_elements * _PLAIN_ELEMENT_BYTES[self.type_id]


@dataclass(frozen=True, kw_only=True)
class GGUFLayout:
    """Where the parts of one GGUF file lie."""

    path: Path
    version: int
    n_kv: int
    kv_span: tuple[int, int]  # [start, end) of the key-value section
    alignment: int
    data_start: int
    tensors: tuple[TensorEntry, ...]  # in directory order
    file_size: int
    architecture: str
    split_count: int  # split.count; 0 when the file is not one part of a split model

    def kv_bytes(self) -> bytes:
        start, end = self.kv_span
        with self.path.open("rb") as handle:
            handle.seek(start)
            return handle.read(end - start)

    def tensor(self, name: str) -> TensorEntry:
        for entry in self.tensors:
            if entry.name == name:
                return entry
        raise KeyError(name)


class _Cursor:
    def __init__(self, buffer: mmap.mmap, path: Path) -> None:
        self.buffer = buffer
        self.path = path
        self.offset = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.offset + size > len(self.buffer):
            raise _truncated(self.path)
        values = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += size
        return values

    def string(self) -> bytes:
        (length,) = self.take("<Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise _truncated(self.path)
        value = self.buffer[self.offset : end]
        self.offset = end
        return value

    def skip_value(self, vtype: int) -> None:
        if vtype in _FIXED_SIZES:
            self.skip(_FIXED_SIZES[vtype])
        elif vtype == _STRING:
            (length,) = self.take("<Q")
            self.skip(length)
        elif vtype == _ARRAY:
            item_type, count = self.take("<IQ")
            if item_type in _FIXED_SIZES:
                self.skip(count * _FIXED_SIZES[item_type])
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        else:
            raise _corrupt(self.path, f"unknown metadata value type {vtype}")

    def skip(self, n: int) -> None:
        if self.offset + n > len(self.buffer):
            raise _truncated(self.path)
        self.offset += n


def read_layout(path: Path) -> GGUFLayout:
    """The layout of the GGUF file at ``path``; a file that is not one is :class:`BadInput`."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size < 24:
                raise _corrupt(path, "it is shorter than a GGUF header")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _parse(path, buffer, size)
    except OSError as exc:
        raise BadInput(
            f"the model {path} cannot be read: {exc.strerror or exc}",
            next_step="check the path and the file's permissions",
        ) from exc


def _parse(path: Path, buffer: mmap.mmap, size: int) -> GGUFLayout:
    cursor = _Cursor(buffer, path)
    if buffer[:4] != GGUF_MAGIC:
        raise _corrupt(path, "it does not start with 'GGUF'")
    cursor.skip(4)
    (version,) = cursor.take("<I")
    if version not in (2, 3):
        # A big-endian file reads its version byte-swapped here (3 -> 50331648).
        raise BadInput(
            f"{path} is GGUF version {version}; only little-endian GGUF 2 and 3 can be copied",
            next_step="convert the model with a current llama.cpp (convert_hf_to_gguf.py)",
        )
    n_tensors, n_kv = cursor.take("<QQ")
    kv_start = cursor.offset
    alignment = DEFAULT_ALIGNMENT
    architecture = ""
    split_count = 0
    for _ in range(n_kv):
        key = cursor.string()
        (vtype,) = cursor.take("<I")
        if key == b"general.alignment" and vtype == _UINT32:
            (alignment,) = cursor.take("<I")
        elif key == b"general.architecture" and vtype == _STRING:
            architecture = cursor.string().decode("utf-8", errors="replace")
        elif key == b"split.count" and vtype in _INTEGER_FORMATS:
            (split_count,) = cursor.take(_INTEGER_FORMATS[vtype])
        else:
            cursor.skip_value(vtype)
    kv_end = cursor.offset
    if alignment <= 0 or alignment & (alignment - 1):
        raise _corrupt(path, f"its general.alignment {alignment} is not a power of two")
    raw_entries: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cursor.string().decode("utf-8", errors="replace")
        (n_dims,) = cursor.take("<I")
        if n_dims > 4:
            raise _corrupt(path, f"the tensor {name} has {n_dims} dimensions")
        ne = cursor.take(f"<{n_dims}Q") if n_dims else ()
        type_id, offset = cursor.take("<IQ")
        raw_entries.append((name, tuple(int(n) for n in ne), int(type_id), int(offset)))
    data_start = _align(cursor.offset, alignment)
    tensors = tuple(
        TensorEntry(name=name, ne=ne, type_id=type_id, offset=data_start + offset)
        for name, ne, type_id, offset in raw_entries
    )
    for entry in tensors:
        if entry.offset > size or (entry.is_plain and entry.offset + entry.plain_nbytes() > size):
            raise BadInput(
                f"the tensor {entry.name} of {path} extends past the end of the file (truncated download?)",
                next_step="re-download or re-convert the model",
            )
    return GGUFLayout(
        path=path,
        version=int(version),
        n_kv=int(n_kv),
        kv_span=(kv_start, kv_end),
        alignment=int(alignment),
        data_start=data_start,
        tensors=tensors,
        file_size=size,
        architecture=architecture,
        split_count=int(split_count),
    )


# --- writing ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class FileRange:
    """Tensor data to copy from a file, as it is."""

    path: Path
    offset: int
    n_bytes: int


ArrayMaker = Callable[[], npt.NDArray[np.generic]]
"""Tensor data computed when it is written (so only one tensor is in memory at a time)."""


@dataclass(frozen=True, kw_only=True)
class TensorSize:
    """What a tensor takes in a file: its directory entry (name, ``ne``) and its data."""

    name: str
    ne: tuple[int, ...]
    n_bytes: int


@dataclass(frozen=True, kw_only=True)
class OutputTensor(TensorSize):
    type_id: int
    data: FileRange | ArrayMaker


def planned_size(layout: GGUFLayout, tensors: Sequence[TensorSize]) -> int:
    """The size of the file :func:`write_gguf` writes for ``tensors`` with ``layout``'s metadata."""
    header = 24 + (layout.kv_span[1] - layout.kv_span[0]) + sum(_info_size(t) for t in tensors)
    return _align(header, layout.alignment) + sum(_align(t.n_bytes, layout.alignment) for t in tensors)


def write_gguf(
    out: BinaryIO,
    *,
    layout: GGUFLayout,
    tensors: Sequence[OutputTensor],
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Write a GGUF with ``layout``'s version and metadata bytes and ``tensors`` in the given
    order, to an open binary file positioned at 0; returns the bytes written.

    Offsets and padding follow ggml's writer: every tensor starts at a multiple of the
    alignment, its data padded with zeros to the next one. ``on_bytes`` hears the running total.
    """
    kv = layout.kv_bytes()
    head = bytearray(GGUF_MAGIC)
    head += struct.pack("<IQQ", layout.version, len(tensors), layout.n_kv)
    head += kv
    offset = 0
    for t in tensors:
        encoded = t.name.encode("utf-8")
        head += struct.pack("<Q", len(encoded)) + encoded
        head += struct.pack(f"<I{len(t.ne)}Q", len(t.ne), *t.ne)
        head += struct.pack("<IQ", t.type_id, offset)
        offset += _align(t.n_bytes, layout.alignment)
    head += bytes(_align(len(head), layout.alignment) - len(head))
    out.write(head)
    written = len(head)
    if on_bytes is not None:
        on_bytes(written)
    for t in tensors:
        if isinstance(t.data, FileRange):
            if t.data.n_bytes != t.n_bytes:
                raise ValueError(f"{t.name}: {t.data.n_bytes} bytes to copy for a tensor of {t.n_bytes}")
            _copy_range(t.data, out)
        else:
            array = np.ascontiguousarray(t.data())
            if array.nbytes != t.n_bytes:
                raise ValueError(f"{t.name}: the data has {array.nbytes} bytes, the tensor {t.n_bytes}")
            out.write(array.reshape(-1).view(np.uint8).data)
        pad = _align(t.n_bytes, layout.alignment) - t.n_bytes
        out.write(bytes(pad))
        written += t.n_bytes + pad
        if on_bytes is not None:
            on_bytes(written)
    return written


def _copy_range(source: FileRange, out: BinaryIO) -> None:
    out.flush()
    with source.path.open("rb") as handle:
        remaining = source.n_bytes
        position = source.offset
        copy_range = getattr(os, "copy_file_range", None)
        if copy_range is not None:
            # In the kernel, no trip through Python's buffers (and a reflink on file systems with one).
            try:
                while remaining > 0:
                    n = copy_range(handle.fileno(), out.fileno(), min(remaining, 1 << 30), position)
                    if n <= 0:
                        break
                    remaining -= n
                    position += n
            except OSError:
                pass  # e.g. EXDEV on old kernels or an unsupported file system: copy in Python below
            # copy_file_range moved the descriptor's position behind the buffered object's back.
            out.seek(0, os.SEEK_END)
        handle.seek(position)
        while remaining > 0:
            chunk = handle.read(min(remaining, _COPY_CHUNK))
            if not chunk:
                raise BadInput(
                    f"{source.path} ended while copying a tensor (was it truncated meanwhile?)",
                    next_step="re-download or re-convert the model",
                )
            out.write(chunk)
            remaining -= len(chunk)


def _info_size(t: TensorSize) -> int:
    return 8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.ne) + 4 + 8


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def _truncated(path: Path) -> BadInput:
    return BadInput(
        f"{path} ends inside its GGUF header (truncated download?)",
        next_step="re-download or re-convert the model",
    )


def _corrupt(path: Path, why: str) -> BadInput:
    return BadInput(
        f"{path} is not a readable GGUF file: {why}",
        next_step="check that the file is a complete GGUF model (re-download or re-convert it)",
    )
