"""Reading a GGUF model: metadata, tensor directory, and weights dequantised lazily, once.

gguf-py's :class:`gguf.GGUFReader` does the parsing (memory-mapped). It refuses a file with a
tensor type it does not know, and microsoft/BitNet's own GGUFs carry I2_S (36), so the reader
here keeps tensors of unknown types aside instead of failing, and this module decodes I2_S
itself (:mod:`.i2s`). A tensor type nobody here can decode is a :class:`BadInput` naming the
tensor, raised when the model is opened rather than halfway through a forward pass.

Memory: a dequantised tensor is cached as float32 and the file pages it came from are handed
back to the kernel (``madvise(MADV_DONTNEED)``), so a quantised model costs its float32 weights
and not also its file. F32 tensors are served straight from the mapping (no copy at all).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine import i2s
from bitnet_crossval.errors import BadInput

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


def _reader_class() -> type[Any]:
    """A :class:`gguf.GGUFReader` fit for big real models and for microsoft/BitNet's files.

    Two departures from gguf-py, both in private hooks of its reader (pinned by the unit tests):

    * tensors of a type gguf-py does not know (I2_S = 36, TL1/TL2) are kept aside in
      ``foreign`` instead of failing the whole file;
    * array metadata is read as one array, not one numpy object per element: gguf-py's own
      parse of a 262144-token vocabulary took 9 s and 680 MB here. Numeric arrays become a
      single part (so ``ReaderField.contents()`` still returns the list); string arrays are
      walked once for their offsets (``string_arrays``) and decoded only on demand.
    """
    import sys

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
    from gguf.gguf_reader import ReaderField

    known_ids = {int(t) for t in GGMLQuantizationType}

    class TolerantReader(GGUFReader):  # type: ignore[misc,unused-ignore]  # Any when gguf ships no types
        foreign: list[tuple[str, int, tuple[int, ...], int]]
        string_arrays: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]

        def _build_fields(self, offs: int, count: int) -> int:
            self.string_arrays = {}
            for _ in range(count):
                orig_offs = offs
                kv_klen, kv_kdata = self._get_str(offs)
                offs += int(kv_klen.nbytes + kv_kdata.nbytes)
                raw_kv_type = self._get(offs, np.uint32)
                offs += int(raw_kv_type.nbytes)
                key = str(bytes(kv_kdata), encoding="utf-8")
                head: list[npt.NDArray[Any]] = [kv_klen, kv_kdata, raw_kv_type]
                if int(raw_kv_type[0]) == GGUFValueType.ARRAY:
                    raw_itype = self._get(offs, np.uint32)
                    alen = self._get(offs + 4, np.uint64)
                    body = offs + 12
                    n = int(alen[0])
                    sub_type = GGUFValueType(int(raw_itype[0]))
                    nptype = self.gguf_scalar_to_np.get(sub_type)
                    if nptype is not None:
                        values = self._get(body, nptype, n)
                        parts = [*head, raw_itype, alen, values]
                        self._push_field(
                            ReaderField(orig_offs, key, parts, [len(parts) - 1], [GGUFValueType.ARRAY, sub_type]),
                            skip_sum=True,
                        )
                        offs = body + int(values.nbytes)
                        continue
                    if sub_type == GGUFValueType.STRING:
                        starts, lengths, end = self._walk_strings(body, n)
                        self.string_arrays[key] = (starts, lengths)
                        parts = [*head, raw_itype, alen]
                        self._push_field(
                            ReaderField(orig_offs, key, parts, [], [GGUFValueType.ARRAY, GGUFValueType.STRING]),
                            skip_sum=True,
                        )
                        offs = end
                        continue
                field_size, field_parts, field_idxs, field_types = self._get_field_parts(offs, raw_kv_type[0])
                parts = head + field_parts
                self._push_field(
                    ReaderField(orig_offs, key, parts, [i + len(head) for i in field_idxs], field_types),
                    skip_sum=True,
                )
                offs += field_size
            return offs

        def _walk_strings(self, offs: int, n: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
            little = (self.byte_order == "I") == (sys.byteorder == "little")
            unpack = struct.Struct("<Q" if little else ">Q").unpack_from
            view = self.data.data  # the mapping's buffer: struct reads it without copies
            starts = np.empty(n, dtype=np.int64)
            lengths = np.empty(n, dtype=np.int64)
            for i in range(n):
                (length,) = unpack(view, offs)
                starts[i] = offs + 8
                lengths[i] = length
                offs += 8 + length
            return starts, lengths, offs

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            architecture_field = self.fields.get("general.architecture")
            architecture = architecture_field.contents() if architecture_field is not None else ""
            known: list[Any] = []
            self.foreign = []
            for field in fields:
                _name_len, name_data, _n_dims, dims, raw_dtype, offset_tensor = field.parts
                type_id = int(raw_dtype[0])
                name = bytes(name_data).decode("utf-8")
                ne = tuple(int(d) for d in dims.tolist())
                if type_id in known_ids and not (type_id == TL2 and architecture in BITNET_FORK_ARCHITECTURES):
                    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
                    n_bytes = int(np.prod(ne, dtype=np.int64)) * type_size // block_size
                    if start_offs + int(offset_tensor[0]) + n_bytes > len(self.data):
                        # gguf-py would fail reshaping a short view; say what happened instead.
                        raise ValueError(f"the tensor {name} extends past the end of the file (truncated download?)")
                    known.append(field)
                    continue
                self.foreign.append((name, type_id, ne, int(start_offs + int(offset_tensor[0]))))
            super()._build_tensors(start_offs, known)

    return TolerantReader


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
            self._reader = _reader_class()(self.path, "r")
        except (ValueError, OSError, IndexError, KeyError, UnicodeDecodeError, struct.error) as exc:
            # gguf-py reports a corrupt header as any of these (a short read, a bad enum value, a
            # duplicated key); all mean the same thing to a user.
            raise BadInput(
                f"{self.path} is not a readable GGUF file ({exc})",
                next_step="check that the file is a complete GGUF model (re-download or re-convert it)",
            ) from exc
        self.architecture = self.get_str("general.architecture", default="")
        self.tensors: dict[str, TensorInfo] = {}
        for t in self._reader.tensors:
            self.tensors[t.name] = TensorInfo(
                name=t.name,
                type_id=int(t.tensor_type),
                type_name=t.tensor_type.name,
                ne=tuple(int(d) for d in t.shape.tolist()),
                offset=int(t.data_offset),
                n_bytes=int(t.n_bytes),
            )
        for name, type_id, ne, offset in self._reader.foreign:
            n_elements = int(np.prod(ne, dtype=np.int64))
            n_bytes = i2s.tensor_nbytes(n_elements) if type_id == I2_S else None
            self.tensors[name] = TensorInfo(
                name=name, type_id=type_id, type_name=_foreign_type_name(type_id), ne=ne, offset=offset, n_bytes=n_bytes
            )
        self._cache: dict[str, F32Array] = {}
        self._file_size = self.path.stat().st_size

    # --- metadata ---

    def get(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            return default
        if key in self._reader.string_arrays:
            return self.string_array(key)
        try:
            return field.contents()
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise BadInput(
                f"the metadata key {key} of {self.path} cannot be read ({exc})",
                next_step="check that the file is a complete GGUF model (re-download or re-convert it)",
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
        field = self._reader.fields.get(key)
        if field is None or len(field.parts) < 5:
            return None
        return int(field.parts[4][0])

    def string_array(self, key: str) -> list[str]:
        """An array-of-strings key, decoded (invalid UTF-8 replaced, as llama.cpp keeps bytes)."""
        starts, lengths = self._reader.string_arrays[key]
        data = self._reader.data.data
        return [bytes(data[s : s + n]).decode("utf-8", errors="replace") for s, n in zip(starts, lengths, strict=True)]

    def string_array_bytes(self, key: str) -> list[bytes]:
        """An array-of-strings key as the exact bytes stored (for copying it into another file)."""
        starts, lengths = self._reader.string_arrays[key]
        data = self._reader.data.data
        return [bytes(data[s : s + n]) for s, n in zip(starts, lengths, strict=True)]

    def numeric_array(self, key: str) -> npt.NDArray[Any] | None:
        """An array-of-numbers key as one numpy array (a view of the file)."""
        field = self._reader.fields.get(key)
        if field is None or key in self._reader.string_arrays or len(field.parts) != 6:
            return None
        return np.asarray(field.parts[5])

    def metadata_keys(self) -> Iterator[str]:
        return iter(self._reader.fields.keys())

    def raw_field(self, key: str) -> Any:
        """gguf-py's ``ReaderField`` for ``key`` (for copying arrays without decoding them)."""
        return self._reader.fields.get(key)

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
            _decoder_for(info, self.path)
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
        decoder = _decoder_for(info, self.path)
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
        decoder = _decoder_for(info, self.path)
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
        decoder = _decoder_for(info, self.path)
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
        return sum(int(a.nbytes) for a in self._cache.values() if not isinstance(a, np.memmap))

    def _raw(self, info: TensorInfo) -> npt.NDArray[np.uint8]:
        data: np.memmap[Any, Any] = self._reader.data
        assert info.n_bytes is not None  # _decoder_for refused unknown sizes
        return np.asarray(data[info.offset : info.offset + info.n_bytes])

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
        mapping = getattr(self._reader.data, "_mmap", None)
        if mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = (offset + page - 1) // page * page  # whole pages only: neighbours may share one
        end = (offset + n_bytes) // page * page
        if end > start:
            try:
                mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
            except (OSError, ValueError):  # an optimisation only; a refusal costs memory, not results
                return


Decoder = Callable[[npt.NDArray[np.uint8], TensorInfo], F32Array]


def _decode_f32(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    return raw.view(np.float32).reshape(info.shape)


def _decode_f16(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    return raw.view(np.float16).astype(np.float32).reshape(info.shape)


def _decode_i2s(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    return i2s.decode(raw, info.n_elements).reshape(info.shape)


def _decode_with_gguf(raw: npt.NDArray[np.uint8], info: TensorInfo) -> F32Array:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(info.type_id)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    row_len = info.ne[0]
    n_rows = info.n_elements // row_len
    row_bytes = row_len // block_size * type_size
    rows = raw.reshape(n_rows, row_bytes)
    out = np.empty((n_rows, row_len), dtype=np.float32)
    step = max(1, _DEQUANT_CHUNK_ELEMENTS // row_len)
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        out[start:stop] = dequantize(rows[start:stop], qtype)
    return out.reshape(info.shape)


def _decoder_for(info: TensorInfo, path: Path) -> Decoder:
    if info.type_id == 0:
        return _decode_f32
    if info.type_id == 1:
        return _decode_f16
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
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import _type_traits

    qtype = GGMLQuantizationType(info.type_id)
    if qtype not in _type_traits:
        raise BadInput(
            f"the tensor {info.name} of {path} has type {info.type_name}, which gguf-py cannot dequantise",
            next_step="convert the model to a type gguf-py decodes (F32, F16, BF16, Q8_0, Q4_K, ...)",
        )
    block_size, _type_size = GGML_QUANT_SIZES[qtype]
    if info.ne[0] % block_size != 0:
        raise BadInput(
            f"the tensor {info.name} of {path} has rows of {info.ne[0]} values, not a multiple of the "
            f"{info.type_name} block size {block_size} (corrupt file?)",
            next_step="re-download or re-convert the model",
        )
    return _decode_with_gguf


def _foreign_type_name(type_id: int) -> str:
    return {I2_S: "I2_S", I8_S: "I8_S", TL1: "TL1", TL2: "TL2"}.get(type_id, f"type{type_id}")


def _missing_key(path: Path, key: str) -> BadInput:
    return BadInput(
        f"the model {path} lacks the metadata key {key}, which its architecture requires",
        next_step="check that the file is a complete model (re-convert it with a current converter)",
    )


def _bad_key(path: Path, key: str, expected: str, value: Any) -> BadInput:
    return BadInput(
        f"the metadata key {key} of {path} should be {expected}, found {value!r}",
        next_step="check that the file is a complete model (re-convert it with a current converter)",
    )
