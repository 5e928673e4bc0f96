"""Reading a GGUF model: metadata, tensor directory, and weights dequantised lazily, once.

The header is parsed by :mod:`.gguf_header` (this package's own reader of the container, over
a memory map; its docstring says why not gguf-py's ``GGUFReader``). gguf-py is used through its
public API only: ``GGMLQuantizationType`` and ``GGML_QUANT_SIZES`` for the types and sizes it
knows, ``gguf.quants.dequantize`` to decode them. Whether it can decode a type is asked of that
public behaviour (one block of zeros; ``NotImplementedError`` means no), not of its internals.

Tensors of types gguf-py does not know are kept, not refused: microsoft/BitNet's GGUFs carry
I2_S (36), which this module decodes itself (:mod:`.i2s`), and TL1/TL2 (38/39; BitNet-fork files
give 39 to TL2, upstream to MXFP4). A tensor type nobody here can decode is a :class:`BadInput`
naming the tensor, raised when the model is opened rather than halfway through a forward pass.

Memory: metadata arrays stay views of the mapping (a vocabulary's strings are decoded on
demand), a dequantised tensor is cached as float32 and the file pages it came from are handed
back to the kernel (``madvise(MADV_DONTNEED)``), so a quantised model costs its float32 weights
and not also its file. F32 tensors are served straight from the mapping (no copy at all).
"""

from __future__ import annotations

import functools
import mmap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.gguf_header import (
    MetadataField,
    StringArray,
    StringRef,
    TensorEntry,
    Value,
    read_header,
)
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util import i2s

F32Array = npt.NDArray[np.float32]

# ggml type ids that are not in gguf-py's enum but occur in the wild.
I2_S = 36  # microsoft/BitNet: 2-bit ternary codes + one float32 scale per tensor
I8_S = 37  # microsoft/BitNet: activations only, never stored in a model
TL1 = 38  # microsoft/BitNet lookup-table kernels (ARM)
TL2 = 39  # microsoft/BitNet lookup-table kernels (x86); upstream gives 39 to MXFP4

# Architectures written by microsoft/BitNet's converters: their type 39 is TL2, not MXFP4.
BITNET_FORK_ARCHITECTURES = frozenset({"bitnet-b1.58", "bitnet-25"})

# Rows decoded per step when dequantising a quantised tensor: bounds the temporaries gguf-py
# makes (its whole-tensor path builds every block's result before concatenating them, which
# doubles the peak for the 262144-row embedding of a Gemma model).
_DEQUANT_CHUNK_ELEMENTS = 1 << 22

_STRINGS_PER_SLICE = 4096
_FOUND_CHARS = 80  # of a wrong value quoted in an error

_NOT_READABLE_NEXT = "check that the file is a complete GGUF model (re-download or re-convert it)"


@dataclass(frozen=True, kw_only=True)
class TensorInfo:
    """One tensor of the file as stored: ``ne`` is ggml's order, ``shape`` the numpy one."""

    name: str
    type_id: int
    type_name: str
    ne: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    n_bytes: int | None  # None when the type is unknown here

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.ne, dtype=np.int64))


class GGUFModelFile:
    """A GGUF file opened for the engine: metadata, tensor directory, lazy float32 weights."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInput(
                f"the model file {self.path} does not exist",
                next_step="check the path passed as the model",
            )
        try:
            self._mapping = _map(self.path)
            self._header = read_header(self._mapping)
            self.architecture = self.get_str("general.architecture", default="")
            tensors = [_tensor_info(entry, self.architecture) for entry in self._header.tensors.values()]
            for info in tensors:
                if info.n_bytes is not None and info.offset + info.n_bytes > len(self._mapping):
                    raise ValueError(f"the tensor {info.name} extends past the end of the file (truncated download?)")
        except (ValueError, OSError) as exc:
            # The parser's reasons (a short read, a count the file cannot hold, a repeated key)
            # and the system's (unreadable, empty) all mean the same thing to a user.
            raise BadInput(f"{self.path} is not a readable GGUF file ({exc})", next_step=_NOT_READABLE_NEXT) from exc
        self.byte_order = self._header.byte_order
        self._data: npt.NDArray[np.uint8] = np.frombuffer(self._mapping, dtype=np.uint8)
        self.tensors: dict[str, TensorInfo] = {info.name: info for info in tensors}
        self._cache: dict[str, F32Array] = {}
        self._file_size = len(self._mapping)

    # --- metadata ---

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` as Python: a number, a string, or a list (``default`` when absent)."""
        field = self._header.fields.get(key)
        if field is None:
            return default
        return self._python(key, field.value)

    def _python(self, key: str, value: Value) -> Any:
        if isinstance(value, StringRef):
            return self._decode(key, value)
        if isinstance(value, StringArray):
            return self._strings(value)
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, list):
            return [self._python(key, item) for item in value]
        return value

    def _decode(self, key: str, ref: StringRef) -> str:
        try:
            return self._mapping[ref.start : ref.start + ref.length].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(
                f"the metadata key {key} of {self.path} cannot be read ({exc})", next_step=_NOT_READABLE_NEXT
            ) from exc

    def get_str(self, key: str, *, default: str | None = None) -> str:
        value = self.get(key)
        if value is None:
            if default is None:
                raise _missing_key(self.path, key)
            return default
        if not isinstance(value, str):
            raise _bad_key(self.path, key, "a string", value)
        return value

    def get_int(self, key: str, *, default: int | None = None) -> int:
        value = self.get(key)
        if value is None:
            if default is None:
                raise _missing_key(self.path, key)
            return default
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise _bad_key(self.path, key, "an integer", value)
        return int(value)

    def get_float(self, key: str, *, default: float | None = None) -> float:
        value = self.get(key)
        if value is None:
            if default is None:
                raise _missing_key(self.path, key)
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise _bad_key(self.path, key, "a number", value)
        return float(value)

    def array_length(self, key: str) -> int | None:
        """Length of an array-valued key without decoding its elements (vocabularies are big)."""
        field = self._header.fields.get(key)
        if field is None or not isinstance(field.value, (StringArray, np.ndarray, list)):
            return None
        return len(field.value)

    def string_array(self, key: str) -> list[str]:
        """An array-of-strings key, decoded (invalid UTF-8 replaced, as llama.cpp keeps bytes)."""
        return self._strings(self._string_array(key))

    def string_array_bytes(self, key: str) -> list[bytes]:
        """An array-of-strings key as the exact bytes stored (for copying it into another file)."""
        return list(self._string_bytes(self._string_array(key)))

    def _string_array(self, key: str) -> StringArray:
        field = self._header.fields.get(key)
        if field is None:
            raise _missing_key(self.path, key)
        if not isinstance(field.value, StringArray):
            raise _bad_key(self.path, key, "an array of strings", self.get(key))
        return field.value

    def _strings(self, array: StringArray) -> list[str]:
        return [s.decode("utf-8", errors="replace") for s in self._string_bytes(array)]

    def _string_bytes(self, array: StringArray) -> Iterator[bytes]:
        # Offsets become Python ints a slice at a time: the whole vocabulary's at once would add
        # two lists of 262144 ints to the peak while the strings are being made.
        mapping = self._mapping
        for first in range(0, len(array), _STRINGS_PER_SLICE):
            last = first + _STRINGS_PER_SLICE
            starts, lengths = array.starts[first:last].tolist(), array.lengths[first:last].tolist()
            for start, length in zip(starts, lengths, strict=True):
                yield mapping[start : start + length]

    def numeric_array(self, key: str) -> npt.NDArray[Any] | None:
        """An array-of-numbers key as one numpy array (a view of the file, in its byte order)."""
        field = self._header.fields.get(key)
        if field is None or not isinstance(field.value, np.ndarray):
            return None
        return field.value

    def metadata_keys(self) -> Iterator[str]:
        return iter(self._header.fields.keys())

    def raw_field(self, key: str) -> MetadataField:
        """The key as the file stores it, its ``types`` as gguf-py's ``GGUFValueType`` (the
        value's type, then an array's element type): for copying it into a ``GGUFWriter``."""
        from gguf import GGUFValueType

        field = self._header.fields.get(key)
        if field is None:
            raise _missing_key(self.path, key)
        return replace(field, types=tuple(GGUFValueType(t) for t in field.types))

    # --- tensors ---

    def has_tensor(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise BadInput(
                f"the model {self.path} has no tensor {name}, which its architecture ({self.architecture}) requires",
                next_step="check that the file is a complete model of that architecture (re-convert it)",
            ) from None

    def check_decodable(self, names: Sequence[str]) -> None:
        """Fail now, naming the tensor, if any of ``names`` has a type that cannot be decoded."""
        for name in names:
            info = self.info(name)
            _decoder_for(info, self.path, self.byte_order)
            if info.n_bytes is not None and info.offset + info.n_bytes > self._file_size:
                raise BadInput(
                    f"the tensor {name} of {self.path} extends past the end of the file (truncated download?)",
                    next_step="re-download or re-convert the model",
                )

    def weight(self, name: str) -> F32Array:
        """The tensor as float32 in numpy order (``ne`` reversed), dequantised once and cached."""
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        info = self.info(name)
        decoder = _decoder_for(info, self.path, self.byte_order)
        array = decoder(self._raw(info), info)
        if info.type_id != 0:  # F32 stays a view of the mapping: nothing to give back
            self._release(info)
        array.setflags(write=False)
        self._cache[name] = array
        return array

    def rows(self, name: str, index: npt.NDArray[np.int64]) -> F32Array:
        """Selected rows (first numpy axis) of a 2-D tensor.

        From the cache when the whole tensor is there; otherwise only those rows are decoded,
        so looking up a few token embeddings does not dequantise a whole vocabulary.
        """
        cached = self._cache.get(name)
        if cached is not None:
            return np.asarray(cached[index], dtype=np.float32)
        info = self.info(name)
        decoder = _decoder_for(info, self.path, self.byte_order)
        if info.type_id == I2_S or len(info.ne) != 2 or info.n_bytes is None:
            return np.asarray(self.weight(name)[index], dtype=np.float32)
        n_rows = info.ne[1]
        raw_rows = self._raw(info).reshape(n_rows, info.n_bytes // n_rows)[index]
        picked = TensorInfo(
            name=info.name,
            type_id=info.type_id,
            type_name=info.type_name,
            ne=(info.ne[0], int(index.shape[0])),
            offset=info.offset,
            n_bytes=int(raw_rows.nbytes),
        )
        return np.array(decoder(np.ascontiguousarray(raw_rows).reshape(-1), picked), dtype=np.float32)

    def count_non_finite(self, name: str, *, chunk_values: int = 1 << 22) -> int:
        """How many values of the tensor are NaN or infinite, decoding a few rows at a time (a
        whole vocabulary is never dequantised at once). Raises :class:`BadInput` for a type
        that cannot be decoded."""
        info = self.info(name)
        decoder = _decoder_for(info, self.path, self.byte_order)
        if info.n_bytes is None or info.n_elements == 0:
            return 0
        if info.type_id == I2_S or len(info.ne) < 2:  # one scale for the whole tensor: decode it whole
            array = decoder(self._raw(info), info)
            return int(array.size - np.count_nonzero(np.isfinite(array)))
        row_len = info.ne[0]
        n_rows = info.n_elements // row_len
        raw = self._raw(info).reshape(n_rows, info.n_bytes // n_rows)
        step = max(1, chunk_values // row_len)
        count = 0
        for start in range(0, n_rows, step):
            stop = min(n_rows, start + step)
            rows = TensorInfo(
                name=info.name,
                type_id=info.type_id,
                type_name=info.type_name,
                ne=(row_len, stop - start),
                offset=info.offset,
                n_bytes=int(raw[start:stop].nbytes),
            )
            values = decoder(np.ascontiguousarray(raw[start:stop]).reshape(-1), rows)
            count += int(values.size - np.count_nonzero(np.isfinite(values)))
        if info.type_id != 0:  # F32 may be viewed by a cached weight
            self._release(info)
        return count

    def cached_bytes(self) -> int:
        """Bytes of the float32 weights held in the cache (F32 tensors, views of the file, excluded)."""
        return sum(int(a.nbytes) for a in self._cache.values() if not np.may_share_memory(a, self._data))

    def _raw(self, info: TensorInfo) -> npt.NDArray[np.uint8]:
        assert info.n_bytes is not None  # _decoder_for refused unknown sizes
        return self._data[info.offset : info.offset + info.n_bytes]

    def release_file_pages(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Hand the file pages of ``name`` (or of its rows ``[start, stop)``) back to the kernel,
        after reading them without caching. F32 tensors keep theirs: cached arrays view them."""
        info = self.info(name)
        if info.type_id == 0 or info.n_bytes is None:
            return
        if rows is None:
            self._release(info)
            return
        row_bytes = info.n_bytes // info.shape[0]
        self._release_range(info.offset + rows[0] * row_bytes, (rows[1] - rows[0]) * row_bytes)

    def _release(self, info: TensorInfo) -> None:
        if info.n_bytes is not None:
            self._release_range(info.offset, info.n_bytes)

    def _release_range(self, offset: int, n_bytes: int) -> None:
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (offset + page - 1) // page * page  # whole pages only: neighbours may share one
        end = (offset + n_bytes) // page * page
        if end > start:
            try:
                self._mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):  # an optimisation only; a refusal costs memory, not results
                return


Decoder = Callable[[npt.NDArray[np.uint8], TensorInfo], F32Array]


def _decode_elements(raw: npt.NDArray[np.uint8], info: TensorInfo, *, dtype: str) -> F32Array:
    # F32 and F16 are stored element by element in the file's byte order (gguf-py's writer swaps
    # them for a big-endian file); little-endian F32 on a little-endian host stays a view.
    values = raw.view(np.dtype(dtype))
    if values.dtype != np.dtype(np.float32):
        values = values.astype(np.float32)
    return values.reshape(info.shape)


def _decode_i2s(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    return i2s.decode(raw, info.n_elements).reshape(info.shape)


def _decode_with_gguf(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    # Block types are stored as gguf-py writes and reads them, whatever the file's byte order.
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(info.type_id)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    row_len = info.ne[0] if info.ne else 1
    out = np.empty((info.n_elements // row_len if row_len else 0, row_len), dtype=np.float32)
    rows = raw.reshape(out.shape[0], row_len // block_size * type_size)
    step = max(1, _DEQUANT_CHUNK_ELEMENTS // max(row_len, 1))
    for start in range(0, out.shape[0], step):
        stop = min(out.shape[0], start + step)
        out[start:stop] = dequantize(rows[start:stop], qtype)
    return out.reshape(info.shape)


Q8_0 = 8
_Q8_0_BLOCK_BYTES = 34  # an fp16 scale, then 32 int8 values
_Q8_0_BLOCKS_PER_STEP = 1 << 15


def _decode_q8_0(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    """Q8_0 as ggml's dequantize_row_q8_0 (and gguf-py) computes it, ``float(q) * float(d)`` in
    float32, bit for bit; a few times faster than gguf-py's, which matters for the vocabulary-
    sized embeddings of small models (Gemma 3's: 168M values in every run)."""
    blocks = raw.reshape(-1, _Q8_0_BLOCK_BYTES)
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    for start in range(0, blocks.shape[0], _Q8_0_BLOCKS_PER_STEP):
        part = blocks[start : start + _Q8_0_BLOCKS_PER_STEP]
        scale = np.ascontiguousarray(part[:, :2]).view(np.float16).astype(np.float32)
        np.multiply(part[:, 2:].view(np.int8), scale, out=out[start : start + part.shape[0]], dtype=np.float32)
    return out.reshape(info.shape)


Q5_0 = 6
_Q5_0_BLOCK_BYTES = 22  # an fp16 scale, 32 fifth bits, then 16 bytes of two 4-bit values each
_Q5_0_SHIFTS = np.arange(16, dtype=np.uint32)


def _decode_q5_0(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    """Q5_0 as ggml's dequantize_row_q5_0 computes it, ``float(q - 16) * float(d)``, bit for bit
    (the type of most of Gemma 3 270M Q4_K_M's layer weights)."""
    blocks = raw.reshape(-1, _Q5_0_BLOCK_BYTES)
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    for start in range(0, blocks.shape[0], _Q8_0_BLOCKS_PER_STEP):
        part = blocks[start : start + _Q8_0_BLOCKS_PER_STEP]
        scale = np.ascontiguousarray(part[:, :2]).view(np.float16).astype(np.float32)
        high = np.ascontiguousarray(part[:, 2:6]).view("<u4")
        low = part[:, 6:].astype(np.int32)
        fifth_0 = (((high >> _Q5_0_SHIFTS) << 4) & 0x10).astype(np.int32)
        fifth_1 = ((high >> (_Q5_0_SHIFTS + 12)) & 0x10).astype(np.int32)
        target = out[start : start + part.shape[0]]
        np.multiply(((low & 0x0F) | fifth_0) - 16, scale, out=target[:, :16], dtype=np.float32)
        np.multiply(((low >> 4) | fifth_1) - 16, scale, out=target[:, 16:], dtype=np.float32)
    return out.reshape(info.shape)


_OWN_DECODERS: dict[int, Decoder] = {}


@functools.cache
def gguf_dequantizes(type_id: int) -> bool:
    """Whether gguf-py's public ``gguf.quants.dequantize`` decodes this ggml type: asked of the
    function itself, with one block of zeros (it raises ``NotImplementedError`` for a type it
    knows the size of but cannot decode)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(type_id)
    _block_size, type_size = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def _decoder_for(info: TensorInfo, path: Path, byte_order: str) -> Decoder:
    if info.type_id == 0:
        return functools.partial(_decode_elements, dtype=byte_order + "f4")
    if info.type_id == 1:
        return functools.partial(_decode_elements, dtype=byte_order + "f2")
    if info.type_id == I2_S:
        return _decode_i2s
    if info.type_name in {"TL1", "TL2"}:
        raise BadInput(
            f"the tensor {info.name} of {path} uses microsoft/BitNet's {info.type_name} lookup-table format "
            f"(type {info.type_id}), which this engine does not decode",
            next_step="use the model's I2_S (or an F16/F32) GGUF instead of the TL1/TL2 one",
        )
    if info.n_bytes is None:
        raise BadInput(
            f"the tensor {info.name} of {path} has ggml type id {info.type_id}, which this engine does not know",
            next_step="convert the model to a type gguf-py decodes (F32, F16, BF16, Q8_0, Q4_K, ...)",
        )
    if not gguf_dequantizes(info.type_id):
        raise BadInput(
            f"the tensor {info.name} of {path} has type {info.type_name}, which gguf-py cannot dequantise",
            next_step="convert the model to a type gguf-py decodes (F32, F16, BF16, Q8_0, Q4_K, ...)",
        )
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block_size, _type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.type_id)]
    row_len = info.ne[0] if info.ne else 1
    if row_len % block_size != 0:
        raise BadInput(
            f"the tensor {info.name} of {path} has rows of {row_len} values, not a multiple of the "
            f"{info.type_name} block size {block_size} (corrupt file?)",
            next_step="re-download or re-convert the model",
        )
    return _OWN_DECODERS.get(info.type_id, _decode_with_gguf)


def _map(path: Path) -> mmap.mmap:
    """The whole file, mapped read-only (an empty file cannot be mapped: say so)."""
    with path.open("rb") as file:
        if path.stat().st_size == 0:
            raise ValueError("it is empty")
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def _tensor_info(entry: TensorEntry, architecture: str) -> TensorInfo:
    """The entry with its type's name and byte size (``None`` for a type nobody here knows)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    known = entry.type_id in _gguf_type_ids() and not (
        entry.type_id == TL2 and architecture in BITNET_FORK_ARCHITECTURES
    )
    n_elements = 1
    for dim in entry.ne:
        n_elements *= dim
    n_bytes: int | None
    if known:
        qtype = GGMLQuantizationType(entry.type_id)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        type_name, n_bytes = qtype.name, n_elements * type_size // block_size
    else:
        type_name = _foreign_type_name(entry.type_id, architecture)
        n_bytes = i2s.tensor_nbytes(n_elements) if entry.type_id == I2_S else None
    return TensorInfo(
        name=entry.name, type_id=entry.type_id, type_name=type_name, ne=entry.ne, offset=entry.offset, n_bytes=n_bytes
    )


@functools.cache
def _gguf_type_ids() -> frozenset[int]:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return frozenset(int(t) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES)


def _foreign_type_name(type_id: int, architecture: str) -> str:
    if type_id == TL2 and architecture not in BITNET_FORK_ARCHITECTURES:
        return "MXFP4"  # upstream's 39, in a gguf-py release older than it
    return {I2_S: "I2_S", I8_S: "I8_S", TL1: "TL1", TL2: "TL2"}.get(type_id, f"type{type_id}")


def _missing_key(path: Path, key: str) -> BadInput:
    return BadInput(
        f"the model {path} lacks the metadata key {key}, which its architecture requires",
        next_step="check that the file is a complete model (re-convert it with a current converter)",
    )


def _bad_key(path: Path, key: str, expected: str, value: Any) -> BadInput:
    found = repr(value)
    if len(found) > _FOUND_CHARS:  # a whole vocabulary is no part of a sentence
        found = found[:_FOUND_CHARS] + "…"
    return BadInput(
        f"the metadata key {key} of {path} should be {expected}, found {found}",
        next_step="check that the file is a complete model (re-convert it with a current converter)",
    )


_OWN_DECODERS.update({Q8_0: _decode_q8_0, Q5_0: _decode_q5_0})
"""Types decoded here rather than by gguf-py: the same values, bit for bit (tests/unit/crossval/
test_gguf_file.py compares them on every block pattern), several times faster."""
