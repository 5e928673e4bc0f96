"""The GGUF container read over a memory map: header, metadata and tensor directory.

A parser of this package's own, and not gguf-py's ``GGUFReader``, for three reasons:

* gguf-py's reader refuses a whole file when one tensor has a type it does not know, and the
  files of microsoft/BitNet carry such types (I2_S = 36, TL1 = 38, TL2 = 39, the last one given
  to MXFP4 by upstream ggml). Keeping those tensors aside took overriding the reader's private
  ``_build_tensors``.
* its metadata parse makes numpy objects per array element: opening Gemma 3 270M (a 262,144-token
  vocabulary) takes it 9 s or more and 700 MB, against 0.1 s and 33 MB here
  (``benchmarks/measure_gguf_open.py``). Reading arrays whole took overriding ``_build_fields``
  and calling four more private helpers.
* those private hooks are not gguf-py's promise: a release may rename or reshape them (one did
  turn duplicate keys from a warning into an error), and a broken hook breaks every model load.

The format is small, versioned and documented (GGUF versions 2 and 3, either byte order), so it
is read here directly; gguf-py's public API (``GGMLQuantizationType``, ``GGML_QUANT_SIZES``,
``gguf.quants``, ``GGUFWriter``) does the rest. Nothing here imports gguf-py.

Layout: the magic ``GGUF``; a uint32 version; uint64 tensor and key counts; the keys (a string
key, a uint32 value type, the value); the tensor directory (a string name, a uint32 dimension
count, uint64 dimensions in ggml order, a uint32 ggml type id, a uint64 offset into the data);
padding to ``general.alignment`` (32 by default); the tensor data. A string is a uint64 length
and that many bytes; an array a uint32 element type, a uint64 count and the elements. A file
written big-endian reads, little-endian, as a version whose low 16 bits are zero.

Every malformed header is a :class:`ValueError` whose message says what is wrong and where,
checked before anything is allocated or looped over: a count or a length that the file cannot
hold, more than 4 dimensions, a repeated key or tensor name, an unknown value type, nesting
deeper than :data:`MAX_ARRAY_NESTING`. Nothing here reads tensor data or checks tensor offsets:
their sizes depend on the tensor types (see :mod:`.gguf_file`).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

# What the parser reads: a memory map of the file, or its bytes (tests).
Buffer: TypeAlias = mmap.mmap | bytes | bytearray

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS: llama.cpp refuses more
MAX_ARRAY_NESTING = 4  # arrays of arrays: llama.cpp reads none, gguf-py any depth
_INT64_MAX = 2**63 - 1
_FIXED_HEADER = 4 + 4 + 8 + 8  # magic, version, tensor count, key count
_SMALLEST_KEY = 8 + 4 + 1  # an empty key name, its type, a one-byte value
_SMALLEST_TENSOR = 8 + 4 + 4 + 8  # an empty name, no dimensions, the type, the offset
_SMALLEST_ARRAY = 4 + 8  # an array element that is itself an empty array


class ValueType(IntEnum):
    """GGUF's metadata value types (the same ids and names as gguf-py's ``GGUFValueType``)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# struct format characters of the fixed-size types; numpy reads the same characters.
_SCALAR_FORMATS: dict[ValueType, str] = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class StringRef:
    """A string value, not decoded: its bytes are ``[start, start + length)`` of the file."""

    start: int
    length: int


@dataclass(frozen=True, eq=False)
class StringArray:
    """An array of strings, not decoded: element ``i`` is ``[starts[i], starts[i] + lengths[i])``."""

    starts: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.starts)


# A numeric scalar is a Python value; a numeric array a numpy view of the file (in its byte order).
Value: TypeAlias = "bool | int | float | StringRef | npt.NDArray[Any] | StringArray | list[Value]"


@dataclass(frozen=True)
class MetadataField:
    """One key of the file. ``types`` is the value's type (a :class:`ValueType`), then for an
    array its element type (and so on for arrays of arrays, from the first element), as
    gguf-py's fields have it."""

    key: str
    types: tuple[int, ...]
    value: Value


@dataclass(frozen=True)
class TensorEntry:
    """One entry of the tensor directory; ``offset`` is absolute (the data section's start added)."""

    name: str
    type_id: int
    ne: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class GGUFHeader:
    """Everything before the tensor data: the metadata and the tensor directory."""

    version: int
    byte_order: Literal["<", ">"]
    fields: dict[str, MetadataField]
    tensors: dict[str, TensorEntry]  # in the file's order
    alignment: int
    data_offset: int


def read_header(buffer: Buffer) -> GGUFHeader:
    """Parse the header of the GGUF file in ``buffer`` (a memory map: nothing is copied but the
    names and scalars). Raises :class:`ValueError` naming what is wrong."""
    return _Parser(buffer).header()


class _Parser:
    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        self.offset = 0
        self._set_order("<")

    def _set_order(self, order: Literal["<", ">"]) -> None:
        self.order = order
        self._u32, self._u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")
        self._scalars = {value_type: struct.Struct(order + fmt) for value_type, fmt in _SCALAR_FORMATS.items()}

    def header(self) -> GGUFHeader:
        if bytes(self.buffer[:4]) != MAGIC:
            raise ValueError("it does not start with 'GGUF'")
        if self.size < _FIXED_HEADER:
            raise ValueError(f"it is {self.size} bytes long, shorter than a GGUF header")
        self.offset = 4
        (version,) = self._u32.unpack_from(self.buffer, 4)
        if version & 0xFFFF == 0:  # written big-endian
            self._set_order(">")
            (version,) = self._u32.unpack_from(self.buffer, 4)
        if version not in VERSIONS:
            raise ValueError(f"it is GGUF version {version}; versions 2 and 3 are read here")
        self.offset = 8
        n_tensors, n_keys = self._uint64("the header"), self._uint64("the header")
        self._check_count(n_keys, _SMALLEST_KEY, "metadata keys")
        fields: dict[str, MetadataField] = {}
        for index in range(n_keys):
            field = self._field(index)
            if field.key in fields:
                raise ValueError(f"the metadata key {field.key} appears twice")
            fields[field.key] = field
        self._check_count(n_tensors, _SMALLEST_TENSOR, "tensors")
        entries: list[tuple[str, int, tuple[int, ...], int]] = []
        names: set[str] = set()
        for index in range(n_tensors):
            entry = self._tensor_entry(index)
            if entry[0] in names:
                raise ValueError(f"the tensor name {entry[0]} appears twice")
            names.add(entry[0])
            entries.append(entry)
        alignment = _alignment(fields.get(ALIGNMENT_KEY))
        data_offset = -(-self.offset // alignment) * alignment
        tensors = {
            name: TensorEntry(name=name, type_id=type_id, ne=ne, offset=data_offset + relative)
            for name, type_id, ne, relative in entries
        }
        return GGUFHeader(
            version=version,
            byte_order=self.order,
            fields=fields,
            tensors=tensors,
            alignment=alignment,
            data_offset=data_offset,
        )

    # --- primitives: each checks that the file holds what it reads ---

    def _take(self, n_bytes: int, what: str) -> int:
        start = self.offset
        if n_bytes > self.size - start:
            raise ValueError(
                f"{what} at byte {start} needs {n_bytes} bytes, but the file ends at byte {self.size} "
                "(truncated download?)"
            )
        self.offset = start + n_bytes
        return start

    def _uint32(self, what: str) -> int:
        value: int = self._u32.unpack_from(self.buffer, self._take(4, what))[0]
        return value

    def _uint64(self, what: str) -> int:
        value: int = self._u64.unpack_from(self.buffer, self._take(8, what))[0]
        return value

    def _string(self, what: str) -> StringRef:
        length = self._uint64(what)
        return StringRef(start=self._take(length, what), length=length)

    def _name(self, what: str) -> str:
        ref = self._string(what)
        try:
            return bytes(self.buffer[ref.start : ref.start + ref.length]).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{what} at byte {ref.start} is not UTF-8") from None

    def _check_count(self, count: int, smallest: int, what: str) -> None:
        # Refuse a count the rest of the file cannot hold before looping over it.
        if count > (self.size - self.offset) // smallest:
            raise ValueError(f"it claims {count} {what}, more than its {self.size} bytes can hold")

    # --- metadata ---

    def _field(self, index: int) -> MetadataField:
        key = self._name(f"the name of metadata key #{index}")
        raw_type = self._uint32(f"the metadata key {key}")
        value_type = self._value_type(raw_type, key)
        types, value = self._value(value_type, key, depth=0)
        return MetadataField(key=key, types=types, value=value)

    def _value_type(self, raw_type: int, key: str) -> ValueType:
        try:
            return ValueType(raw_type)
        except ValueError:
            raise ValueError(f"the metadata key {key} has value type {raw_type}, which GGUF does not define") from None

    def _value(self, value_type: ValueType, key: str, *, depth: int) -> tuple[tuple[int, ...], Value]:
        what = f"the metadata key {key}"
        item = self._scalars.get(value_type)
        if item is not None:
            scalar: bool | int | float = item.unpack_from(self.buffer, self._take(item.size, what))[0]
            return (value_type,), scalar
        if value_type == ValueType.STRING:
            return (value_type,), self._string(what)
        if depth >= MAX_ARRAY_NESTING:
            raise ValueError(f"the metadata key {key} nests arrays deeper than {MAX_ARRAY_NESTING} levels")
        element_type = self._value_type(self._uint32(what), key)
        count = self._uint64(what)
        fmt = _SCALAR_FORMATS.get(element_type)
        if fmt is not None:
            dtype = np.dtype(self.order + fmt)
            if count > (self.size - self.offset) // dtype.itemsize:
                raise ValueError(
                    f"{what} claims {count} elements of {dtype.itemsize} bytes, past the end of the file "
                    "(truncated download?)"
                )
            start = self._take(count * dtype.itemsize, what)
            return (value_type, element_type), np.frombuffer(self.buffer, dtype=dtype, count=count, offset=start)
        if element_type == ValueType.STRING:
            return (value_type, element_type), self._strings(count, key)
        if count > (self.size - self.offset) // _SMALLEST_ARRAY:
            raise ValueError(f"{what} claims {count} arrays, more than the rest of the file can hold")
        inner_types: tuple[int, ...] = (element_type,)
        items: list[Value] = []
        for index in range(count):
            types, element = self._value(element_type, key, depth=depth + 1)
            if index == 0:
                inner_types = types
            items.append(element)
        return (value_type, *inner_types), items

    def _strings(self, count: int, key: str) -> StringArray:
        if count > (self.size - self.offset) // 8:
            raise ValueError(
                f"the metadata key {key} claims {count} strings, more than the rest of the file can hold "
                "(truncated download?)"
            )
        starts = np.empty(count, dtype=np.int64)
        lengths = np.empty(count, dtype=np.int64)
        unpack, buffer, offset = self._u64.unpack_from, self.buffer, self.offset
        # The hot loop of a big vocabulary: no check per string. A length past the end makes the
        # next read fail (or the offset exceed the size, checked once after the loop).
        try:
            for index in range(count):
                (length,) = unpack(buffer, offset)
                starts[index] = offset + 8
                lengths[index] = length
                offset += 8 + length
        except (struct.error, OverflowError):
            offset = self.size + 1
        if offset > self.size:
            raise ValueError(
                f"the metadata key {key} (an array of {count} strings) runs past the end of the file "
                "(truncated download?)"
            )
        self.offset = offset
        return StringArray(starts=starts, lengths=lengths)

    # --- tensor directory ---

    def _tensor_entry(self, index: int) -> tuple[str, int, tuple[int, ...], int]:
        name = self._name(f"the name of tensor #{index}")
        what = f"the tensor directory entry of {name}"
        n_dims = self._uint32(what)
        if n_dims > MAX_DIMS:
            raise ValueError(f"the tensor {name} has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}")
        ne = tuple(self._uint64(what) for _ in range(n_dims))
        n_elements = 1
        for dim in ne:
            n_elements *= dim
        if n_elements > _INT64_MAX:
            raise ValueError(f"the tensor {name} has dimensions {list(ne)}, more elements than ggml can count")
        type_id = self._uint32(what)
        relative = self._uint64(what)
        return name, type_id, ne, relative


def _alignment(field: MetadataField | None) -> int:
    if field is None:
        return DEFAULT_ALIGNMENT
    if field.types != (ValueType.UINT32,):
        raise ValueError(f"{ALIGNMENT_KEY} should be a uint32, found a {ValueType(field.types[0]).name.lower()}")
    value = field.value
    assert isinstance(value, int)
    if value == 0 or value & (value - 1):
        raise ValueError(f"{ALIGNMENT_KEY} is {value}, not a power of two")
    return value
