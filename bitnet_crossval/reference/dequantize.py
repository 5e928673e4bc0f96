"""The float copy of a quantised model, dequantised exactly as the backend dequantises it.

A reference backend multiplies quantised weights by activations it first rounds to 8 bits, so
a float engine cannot follow a quantised model closely. The same weights written as floats
remove that rounding: the backend run on the copy computes what an exact float engine computes.
The copy changes nothing but the quantised tensors: the metadata (vocabulary included) is the
source's very bytes, and every tensor that was not quantised is copied byte for byte, in the
source's order.

How each quantised tensor becomes float:

* by the backend's own quantiser: ``llama_model_quantize`` to F32, F16 or BF16 with
  requantising allowed reads each quantised tensor with its type's ``to_float`` (ggml's
  ``dequantize_row_*``, what the CPU backend itself uses to read such a tensor) and writes the
  result, rounded to F16/BF16 by ggml when those are asked for. The backend is given a file
  holding only those tensors (and the model's metadata); its output's order and its own
  ``general.file_type`` are discarded by the assembly below.
* microsoft/BitNet's I2_S, which bitnet.cpp cannot dequantise (its type has no ``to_float``):
  decoded here (:mod:`bitnet_crossval.util.i2s`, the engine's decoder) into what bitnet.cpp's kernel
  multiplies by, ``(code - 1) * scale``. A tensor holding the code 3, which bitnet.cpp's
  quantiser never writes, is refused. TL1/TL2 tensors are refused: neither side can decode them.

The copy is cached under the cache root, keyed by the model's sha256, the backend and its
commit, and the float type; it is written under a lock (two processes asking at once get one
copy), to a temporary name in the same directory and renamed, after checking the free space.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BadInput, PermissionDenied, UnclassifiedError
from bitnet_crossval.reference.client import Quantization
from bitnet_crossval.reference.gguf_container import (
    FLOAT_TYPE_IDS,
    FileRange,
    GGUFLayout,
    OutputTensor,
    TensorEntry,
    TensorSize,
    planned_size,
    read_layout,
    write_gguf,
)
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.lock import DEFAULT_LOCK_TIMEOUT, exclusive_lock
from bitnet_crossval.util import i2s, ui
from bitnet_crossval.util.files import (
    file_sha256,
    fsync_dir,
    make_dir,
    os_error,
    read_json_file,
    remove_tree,
    write_json_atomic,
)

FloatType = Literal["F32", "F16", "BF16"]
FloatTypeRequest = Literal["auto", "F32", "F16", "BF16"]
FLOAT_TYPES: tuple[FloatType, ...] = ("F32", "F16", "BF16")
FLOAT_TYPE_REQUESTS: tuple[FloatTypeRequest, ...] = ("auto", *FLOAT_TYPES)
_ELEMENT_BYTES: dict[FloatType, int] = {"F32": 4, "F16": 2, "BF16": 2}

# microsoft/BitNet's ggml type ids (its fork's ggml.h); upstream llama.cpp gives 39 to MXFP4.
I2_S = 36
_BITNET_UNDECODABLE = {37: "I8_S", 38: "TL1", 39: "TL2"}

# Room left free beyond the files themselves (the note, the file system's own metadata).
DISK_MARGIN_BYTES = 64 << 20

NOTE_FORMAT = "bitnet-float-copy"
NOTE_VERSION = 1

_HEX = re.compile(r"^[0-9a-f]{7,64}$")
_POLL_SECONDS = 0.5


class Dequantizer(Protocol):
    """What the float copy needs of a reference shim (:class:`~bitnet_crossval.reference.client.Shim`)."""

    def info(self, model: Path | None = None, *, load_weights: bool = False) -> dict[str, Any]: ...

    def quantize(
        self, model: Path, out: Path, type: str, *, threads: int = ..., allow_requantize: bool = ...
    ) -> Quantization: ...


@dataclass(frozen=True, kw_only=True)
class BackendIdentity:
    """Which backend build dequantises: its name and its commit (or a digest of its libraries
    when the build does not know its commit)."""

    name: str
    commit: str


@dataclass(frozen=True, kw_only=True)
class FloatCopy:
    """A float copy, found in the cache or just written."""

    path: Path
    float_type: FloatType
    size_bytes: int
    seconds: float  # this call: the lookup, or the lookup and the writing
    cached: bool
    reason: str  # why this float type
    source: Path
    source_sha256: str
    backend: str
    backend_commit: str
    by_backend: int  # tensors the backend's own quantiser dequantised
    by_decoder: int  # I2_S tensors decoded here

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "float_type": self.float_type,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "reason": self.reason,
            "source": str(self.source),
            "source_sha256": self.source_sha256,
            "backend": self.backend,
            "backend_commit": self.backend_commit,
            "dequantized_by_backend": self.by_backend,
            "decoded_here": self.by_decoder,
        }


def quantized_tensors(model: Path) -> tuple[str, ...]:
    """The names of ``model``'s quantised tensors; empty for a float model (which needs no copy)."""
    return tuple(t.name for t in read_layout(Path(model)).tensors if not t.is_plain)


def backend_identity(info: Mapping[str, Any]) -> BackendIdentity:
    """The identity of the backend a shim was built against, from its ``info()`` document."""
    name = str(info.get("backend") or "unknown")
    commit = str(info.get("backend_commit") or "").lower()
    if _HEX.match(commit):
        return BackendIdentity(name=name, commit=commit)
    # A build from an archive or a local tree may not know its commit: its libraries stand in.
    return BackendIdentity(name=name, commit="libs-" + _libraries_digest(Path(str(info.get("lib_dir") or ""))))


def float_copy(
    model: Path,
    backend: Dequantizer,
    *,
    cache: CacheLayout,
    float_type: FloatTypeRequest = "auto",
    model_sha256: str | None = None,
    identity: BackendIdentity | None = None,
    threads: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> FloatCopy:
    """The float copy of ``model`` for ``backend``: from the cache, or written once.

    ``float_type``: ``auto`` is F32, or F16 when F32 does not fit on the disk (the record's
    ``reason`` says so); F32, F16 or BF16 are taken as asked. ``model_sha256`` and
    ``identity`` spare the hashing and the ``info`` call when the caller has them already.
    A model without quantised tensors, a split model, and free space too small for the copy
    are refused before anything is written.
    """
    started = time.monotonic()
    model = Path(model).absolute()
    if float_type not in FLOAT_TYPE_REQUESTS:
        raise BadInput(
            f"{float_type!r} is not a float type for the dequantised copy",
            next_step=f"use one of {', '.join(FLOAT_TYPE_REQUESTS)}",
        )
    sha256 = model_sha256 or _sha256(model)
    ident = identity or backend_identity(backend.info())
    first_choice: FloatType = "F32" if float_type == "auto" else float_type
    found = _lookup(cache, sha256, ident, first_choice)
    if found is not None:
        return _record(found, model, started, cached=True, reason=_asked(float_type, first_choice))

    plan = _plan(model, ident)
    cache.ensure()
    lock = cache.float_copy_lock(sha256, ident.name, ident.commit)
    with exclusive_lock(lock, purpose=f"write the float copy of {model.name}", timeout=lock_timeout):
        found = _lookup(cache, sha256, ident, first_choice)
        if found is not None:  # another process wrote it while this one waited
            return _record(found, model, started, cached=True, reason=_asked(float_type, first_choice))
        for ft in FLOAT_TYPES:
            for leftover in cache.float_copy_leftovers(cache.float_copy(sha256, ident.name, ident.commit, ft)):
                remove_tree(leftover)
        chosen, reason = _choose_float_type(plan, cache, float_type)
        target = cache.float_copy(sha256, ident.name, ident.commit, chosen)
        found = _lookup(cache, sha256, ident, chosen)
        if found is not None:
            return _record(found, model, started, cached=True, reason=reason)
        write_seconds = _write(plan, backend, target, chosen, threads=threads or os.cpu_count() or 1, cache=cache)
        note = {
            "format": NOTE_FORMAT,
            "version": NOTE_VERSION,
            "source": str(model),
            "source_sha256": sha256,
            "backend": ident.name,
            "backend_commit": ident.commit,
            "float_type": chosen,
            "size_bytes": target.stat().st_size,
            "write_seconds": write_seconds,  # per step: backend_input, backend, assembly, check; total
            "dequantized_by_backend": [t.name for t in plan.by_backend],
            "decoded_here": [t.name for t in plan.by_decoder],
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(cache.float_copy_note(target), note, what="the float copy's note")
    return _record((target, note), model, started, cached=False, reason=reason)


# --- the cache ----------------------------------------------------------------------------


def _lookup(
    cache: CacheLayout, sha256: str, ident: BackendIdentity, float_type: FloatType
) -> tuple[Path, dict[str, Any]] | None:
    """A finished copy: the file and its note, the note naming this model and the file's size."""
    path = cache.float_copy(sha256, ident.name, ident.commit, float_type)
    note = read_json_file(cache.float_copy_note(path))
    if not isinstance(note, dict) or note.get("format") != NOTE_FORMAT or note.get("version") != NOTE_VERSION:
        return None
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if note.get("source_sha256") != sha256 or note.get("size_bytes") != size:
        return None
    return path, note


def _record(found: tuple[Path, dict[str, Any]], model: Path, started: float, *, cached: bool, reason: str) -> FloatCopy:
    path, note = found
    return FloatCopy(
        path=path,
        float_type=cast("FloatType", note["float_type"]),
        size_bytes=int(note["size_bytes"]),
        seconds=time.monotonic() - started,
        cached=cached,
        reason=reason,
        source=model,
        source_sha256=str(note["source_sha256"]),
        backend=str(note["backend"]),
        backend_commit=str(note["backend_commit"]),
        by_backend=len(note.get("dequantized_by_backend", [])),
        by_decoder=len(note.get("decoded_here", [])),
    )


def _asked(request: FloatTypeRequest, chosen: FloatType) -> str:
    return f"{chosen}, the default" if request == "auto" else f"{chosen}, as asked"


def _sha256(model: Path) -> str:
    try:
        return file_sha256(model)
    except FileNotFoundError:
        raise BadInput(f"the model {model} does not exist", next_step="check the model's path") from None
    except OSError as exc:
        raise BadInput(
            f"the model {model} cannot be read: {exc.strerror or exc}", next_step="check the model's path"
        ) from exc


def _libraries_digest(lib_dir: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    libraries = sorted(p for p in lib_dir.glob("lib*") if p.is_file() and not p.is_symlink()) if lib_dir.name else []
    if not libraries:
        raise BadInput(
            f"the backend's build does not record its commit and its libraries are not in {lib_dir!s}",
            next_step="rebuild the shim with `invoke rebuild`",
        )
    for library in libraries:
        digest.update(library.name.encode())
        digest.update(file_sha256(library).encode())
    return digest.hexdigest()[:12]


# --- what to do with each tensor ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Plan:
    layout: GGUFLayout
    by_backend: tuple[TensorEntry, ...]  # quantised tensors the backend's quantiser dequantises
    by_decoder: tuple[TensorEntry, ...]  # I2_S tensors decoded here
    quantized_nbytes: dict[str, int]  # the stored size of every quantised tensor


def _plan(model: Path, ident: BackendIdentity) -> _Plan:
    layout = read_layout(model)
    if layout.split_count > 1:
        raise BadInput(
            f"{model} is one part of a model split into {layout.split_count} files",
            next_step="merge the parts into one GGUF first (llama.cpp's llama-gguf-split --merge)",
        )
    quantized = [t for t in layout.tensors if not t.is_plain]
    if not quantized:
        raise BadInput(
            f"{model.name} has no quantised tensors: it is its own float reference",
            next_step="use the model as it is (ask quantized_tensors() before making a copy)",
        )
    by_decoder: list[TensorEntry] = []
    by_backend: list[TensorEntry] = []
    sizes: dict[str, int] = {}
    for entry in quantized:
        if entry.type_id == I2_S:
            if ident.name != "bitnet":
                raise BadInput(
                    f"{model.name} holds microsoft/BitNet I2_S tensors ({entry.name}), which only bitnet.cpp reads",
                    next_step="make the float copy with the bitnet backend (--backend bitnet)",
                )
            by_decoder.append(entry)
            sizes[entry.name] = i2s.tensor_nbytes(entry.n_elements)
            continue
        if ident.name == "bitnet" and entry.type_id in _BITNET_UNDECODABLE:
            kind = _BITNET_UNDECODABLE[entry.type_id]
            raise BadInput(
                f"{model.name} holds {kind} tensors ({entry.name}): bitnet.cpp has no dequantiser for them "
                "and the suite no decoder, so no float copy can be made",
                next_step="convert the model to I2_S or TQ2_0 with bitnet.cpp's tools, then make the copy",
            )
        by_backend.append(entry)
        sizes[entry.name] = _quantized_nbytes(model, entry)
    for entry in quantized:
        if entry.offset + sizes[entry.name] > layout.file_size:
            raise BadInput(
                f"the tensor {entry.name} of {model} extends past the end of the file (truncated download?)",
                next_step="re-download or re-convert the model",
            )
    return _Plan(layout=layout, by_backend=tuple(by_backend), by_decoder=tuple(by_decoder), quantized_nbytes=sizes)


def _quantized_nbytes(model: Path, entry: TensorEntry) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(entry.type_id)]
    except (ValueError, KeyError):
        raise BadInput(
            f"the tensor {entry.name} of {model.name} has ggml type {entry.type_id}, which the suite cannot size",
            next_step="update the gguf package (pip install -U gguf), or convert the model to a common type",
        ) from None
    if entry.ne and entry.ne[0] % block:
        raise BadInput(
            f"the tensor {entry.name} of {model.name} has rows of {entry.ne[0]} values, "
            f"not whole blocks of {block} (corrupt file?)",
            next_step="re-download or re-convert the model",
        )
    return entry.n_elements // block * type_size


def _float_sizes(plan: _Plan, float_type: FloatType, entries: Sequence[TensorEntry]) -> list[TensorSize]:
    """What ``entries`` take once float: plain tensors as they are, quantised ones as ``float_type``."""
    return [
        TensorSize(
            name=t.name,
            ne=t.ne,
            n_bytes=t.plain_nbytes() if t.is_plain else t.n_elements * _ELEMENT_BYTES[float_type],
        )
        for t in entries
    ]


def _output_tensors(plan: _Plan, float_type: FloatType, backend_output: GGUFLayout | None) -> list[OutputTensor]:
    """The copy's tensors, in the source's order: plain ones copied, quantised ones as floats."""
    type_id = FLOAT_TYPE_IDS[float_type]
    by_decoder = {t.name for t in plan.by_decoder}
    out: list[OutputTensor] = []
    for entry, size in zip(plan.layout.tensors, _float_sizes(plan, float_type, plan.layout.tensors), strict=True):
        data: FileRange | _I2SDecoding
        if entry.is_plain:
            data = FileRange(path=plan.layout.path, offset=entry.offset, n_bytes=size.n_bytes)
        elif entry.name in by_decoder:
            data = _I2SDecoding(path=plan.layout.path, entry=entry, float_type=float_type)
        else:
            assert backend_output is not None  # _write reads the backend's output before assembling
            offset = backend_output.tensor(entry.name).offset
            data = FileRange(path=backend_output.path, offset=offset, n_bytes=size.n_bytes)
        out.append(
            OutputTensor(
                name=entry.name,
                ne=entry.ne,
                n_bytes=size.n_bytes,
                type_id=entry.type_id if entry.is_plain else type_id,
                data=data,
            )
        )
    return out


def _backend_input_tensors(plan: _Plan) -> list[OutputTensor]:
    """The file the backend's quantiser reads: the model's metadata and the tensors it dequantises."""
    return [
        OutputTensor(
            name=t.name,
            ne=t.ne,
            type_id=t.type_id,
            n_bytes=plan.quantized_nbytes[t.name],
            data=FileRange(path=plan.layout.path, offset=t.offset, n_bytes=plan.quantized_nbytes[t.name]),
        )
        for t in plan.by_backend
    ]


# --- I2_S, decoded here -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _I2SDecoding:
    """One I2_S tensor as the float values bitnet.cpp's kernel multiplies by, made when written."""

    path: Path
    entry: TensorEntry
    float_type: FloatType

    def __call__(self) -> npt.NDArray[np.generic]:
        n = self.entry.n_elements
        n_bytes = i2s.tensor_nbytes(n)
        with self.path.open("rb") as handle:
            handle.seek(self.entry.offset)
            raw = np.frombuffer(handle.read(n_bytes), dtype=np.uint8)
        packed = raw[: n // 4]
        # Code 3 (both bits of a 2-bit field set) is never written by bitnet.cpp's quantiser; its
        # kernel would read it as +2, the engine's decoder as 0. Neither is a weight to trust.
        if np.any(packed & (packed >> 1) & 0x55):
            raise BadInput(
                f"the I2_S tensor {self.entry.name} of {self.path.name} holds the 2-bit code 3, "
                "which bitnet.cpp's quantiser never writes (corrupt file?)",
                next_step="re-convert the model with bitnet.cpp's own tools",
            )
        return to_float_type(i2s.decode(raw, n), self.float_type)


def to_float_type(values: npt.NDArray[np.float32], float_type: FloatType) -> npt.NDArray[np.generic]:
    """float32 values rounded as ggml rounds them: to nearest, ties to even (``ggml_fp32_to_fp16``,
    ``ggml_fp32_to_bf16``, NaNs kept quiet)."""
    if float_type == "F32":
        return values
    if float_type == "F16":
        with np.errstate(over="ignore"):  # beyond F16's range is inf, as in ggml; the copy's check refuses it
            return values.astype(np.float16)
    bits = values.view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    quiet = ((bits >> 16) | 64).astype(np.uint16)
    return np.where(nan, quiet, rounded)


# --- choosing the float type ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _Sizes:
    backend_input: int  # the quantised tensors handed to the backend (0 when there are none)
    backend_output: int  # those tensors as floats, as the backend writes them
    copy: int  # the float copy

    @property
    def peak(self) -> int:
        """The most the disk holds at once: the backend's input is deleted once read, before the
        copy is assembled from its output."""
        return self.backend_output + max(self.backend_input, self.copy)


def _sizes(plan: _Plan, float_type: FloatType) -> _Sizes:
    layout = plan.layout
    copy = planned_size(layout, _float_sizes(plan, float_type, layout.tensors))
    if not plan.by_backend:
        return _Sizes(backend_input=0, backend_output=0, copy=copy)
    return _Sizes(
        backend_input=planned_size(layout, _backend_input_tensors(plan)),
        backend_output=planned_size(layout, _float_sizes(plan, float_type, plan.by_backend)),
        copy=copy,
    )


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _choose_float_type(plan: _Plan, cache: CacheLayout, request: FloatTypeRequest) -> tuple[FloatType, str]:
    make_dir(cache.float_copies)
    free = _free_bytes(cache.float_copies)
    candidates: list[FloatType] = ["F32", "F16"] if request == "auto" else [request]
    needs: dict[FloatType, int] = {}
    for ft in candidates:
        needs[ft] = _sizes(plan, ft).peak + DISK_MARGIN_BYTES
        if needs[ft] <= free:
            if ft == candidates[0]:
                return ft, _asked(request, ft)
            return ft, (
                f"F16, because F32 does not fit: it needs {_gb(needs['F32'])} in {cache.float_copies}, "
                f"{_gb(free)} are free"
            )
    first = candidates[0]
    alternatives = "" if request == "auto" else (" ask for an F16 copy (half the size)," if first == "F32" else "")
    also = f" (an F16 copy needs {_gb(needs['F16'])})" if request == "auto" else ""
    raise PermissionDenied(
        f"there is not enough free space in {cache.float_copies} for the {first} copy of {plan.layout.path.name}: "
        f"it needs {_gb(needs[first])} while writing{also}, {_gb(free)} are free",
        next_step=f"free {_gb(min(needs.values()) - free)} there,{alternatives} "
        "or point BITNET_CACHE_DIR at a disk with more room",
    )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --- writing --------------------------------------------------------------------------------


def _write(
    plan: _Plan, backend: Dequantizer, target: Path, float_type: FloatType, *, threads: int, cache: CacheLayout
) -> dict[str, float]:
    """Write the copy to ``target`` (atomically); returns the seconds each step took."""
    started = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(step: str) -> None:
        seconds[step] = round(time.monotonic() - started - sum(seconds.values()), 3)

    pid = os.getpid()
    work = cache.float_copy_workdir(target, pid)
    temp = cache.float_copy_temp(target, pid)
    sizes = _sizes(plan, float_type)
    total = sizes.backend_input + sizes.backend_output + sizes.copy
    name = plan.layout.path.name
    try:
        make_dir(work)
        with ui.progress(f"writing the {float_type} copy of {name}", total=total, unit="bytes") as task:
            backend_output: GGUFLayout | None = None
            if plan.by_backend:
                backend_in = work / "quantized.gguf"
                task.describe(f"{name}: the tensors for the backend's quantiser")
                with _open_new(backend_in) as handle:
                    write_gguf(
                        handle,
                        layout=plan.layout,
                        tensors=_backend_input_tensors(plan),
                        on_bytes=lambda n: task.advance_to(n, total),
                    )
                lap("backend_input")
                task.describe(f"{name}: dequantising {len(plan.by_backend)} tensors with the backend")
                backend_out = work / "dequantized.gguf"
                with _watch_growth(work, lambda n: task.advance_to(n, total)):
                    backend.quantize(backend_in, backend_out, float_type, threads=threads, allow_requantize=True)
                backend_in.unlink()
                backend_output = read_layout(backend_out)
                _check_backend_output(plan, backend_output, float_type)
                lap("backend")
            task.describe(f"{name}: assembling the {float_type} copy")
            done_before = sizes.backend_input + sizes.backend_output
            with _open_new(temp) as handle:
                write_gguf(
                    handle,
                    layout=plan.layout,
                    tensors=_output_tensors(plan, float_type, backend_output),
                    on_bytes=lambda n: task.advance_to(done_before + n, total),
                )
                handle.flush()
                os.fsync(handle.fileno())
            lap("assembly")
        _check_copy(plan, temp, float_type)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        fsync_dir(target.parent)
        lap("check")
    except OSError as exc:
        raise os_error(exc, target) from exc
    finally:
        temp.unlink(missing_ok=True)
        remove_tree(work)
    seconds["total"] = round(time.monotonic() - started, 3)
    return seconds


@contextlib.contextmanager
def _open_new(path: Path) -> Iterator[Any]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        yield handle


@contextlib.contextmanager
def _watch_growth(directory: Path, report: Any) -> Iterator[None]:
    """Report the bytes in ``directory`` while the body runs (the backend writes there)."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(_POLL_SECONDS):
            with contextlib.suppress(OSError):
                report(sum(p.stat().st_size for p in directory.iterdir() if p.is_file()))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _check_backend_output(plan: _Plan, output: GGUFLayout, float_type: FloatType) -> None:
    """Every tensor handed to the backend came back as ``float_type``, with its shape."""
    type_id = FLOAT_TYPE_IDS[float_type]
    names = {t.name: t for t in output.tensors}
    for entry in plan.by_backend:
        got = names.get(entry.name)
        if got is None or got.type_id != type_id or got.ne != entry.ne:
            what = "left it out" if got is None else f"wrote type {got.type_id} of shape {list(got.ne)}"
            raise UnclassifiedError(
                f"the backend's quantiser did not dequantise {entry.name} of {plan.layout.path.name} "
                f"to {float_type}: it {what}",
                next_step="report it with the model; a float copy cannot be made with this backend",
            )


def _check_copy(plan: _Plan, copy: Path, float_type: FloatType) -> None:
    """The copy has the source's metadata bytes and directory (quantised tensors now float), and
    no dequantised value overflowed the float type."""
    written = read_layout(copy)
    type_id = FLOAT_TYPE_IDS[float_type]
    expected = [(t.name, t.ne, t.type_id if t.is_plain else type_id) for t in plan.layout.tensors]
    if [(t.name, t.ne, t.type_id) for t in written.tensors] != expected or written.kv_bytes() != plan.layout.kv_bytes():
        raise UnclassifiedError(
            f"the float copy of {plan.layout.path.name} does not have the source's metadata and tensors",
            next_step="report it; the copy was not kept",
        )
    if float_type != "F16":
        return  # to_float's results are finite, and F32 and BF16 hold every float32 magnitude
    mapped = np.memmap(copy, dtype=np.uint8, mode="r")
    for entry in written.tensors:
        if entry.type_id == type_id and not plan.layout.tensor(entry.name).is_plain:
            values = mapped[entry.offset : entry.offset + entry.n_elements * 2].view(np.float16)
            if not np.isfinite(values).all():
                raise BadInput(
                    f"{entry.name} of {plan.layout.path.name} has values beyond F16's range once dequantised",
                    next_step="ask for an F32 or BF16 copy instead",
                )
