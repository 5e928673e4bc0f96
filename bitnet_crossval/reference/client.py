"""Talking to a built C++ reference shim (``bitnet-shim``).

:class:`Shim` runs the executable: inputs go to files in a private temporary directory, JSON
comes back on stdout and arrays as ``.npy`` files. ``trace`` writes a directory of the
intermediate tensors llama.cpp computed, described by a manifest (:class:`TraceResult`). The
protocol is documented in ``docs/reference/shim.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BackendUnavailable, BadInput, ProgramCouldNotStart, SuiteError, UnclassifiedError
from bitnet_crossval.util import proc, ui
from bitnet_crossval.util.files import make_dir, os_error

KvType = Literal["auto", "f32", "f16"]
"""``auto``: F32 K and V, falling back to F32 K + F16 V, then F16 K and V, when the backend
refuses the context (the 2024 fork allows only an F16 V cache without flash attention)."""

# bitnet-shim's exit codes (cpp/src/errors.h).
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_UNSUPPORTED = 4
EXIT_DECODE = 5

DEFAULT_THREADS = 1
DEFAULT_KV_TYPE: KvType = "auto"
TRACE_FORMAT = "bitnet-shim-trace"
TRACE_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class Tokenization:
    tokens: tuple[int, ...]
    pieces: tuple[bytes, ...]  # exact bytes; a piece may be part of a UTF-8 character
    metadata: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Detokenization:
    text: str  # decoded with errors="replace"
    text_bytes: bytes
    pieces: tuple[bytes, ...]
    metadata: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Generation:
    tokens: tuple[int, ...]
    logits: npt.NDArray[np.float32]  # [n, n_vocab]: row k is the distribution token k was taken from
    metadata: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class RunReport:
    """The evaluation settings a ``logits``/``generate``/``trace`` run reports (typed view of its document)."""

    kv_type_requested: str  # "auto", "f32" or "f16"
    kv_type_k: str  # what the context really uses
    kv_type_v: str
    kv_fallback: str | None  # why auto fell back from F32, in llama.cpp's words; None if it did not
    threads: int
    n_ctx: int
    n_ubatch: int
    seed: int | None  # None: the API has no context seed
    api: str


def run_report(doc: Mapping[str, Any]) -> RunReport:
    """The run settings of a shim document (``Shim.logits``'s metadata, ``Generation.metadata``, ...)."""
    kv = str(doc.get("kv_type", ""))
    fallback = doc.get("kv_fallback")
    seed = doc.get("seed")
    return RunReport(
        kv_type_requested=str(doc.get("kv_type_requested", kv)),
        kv_type_k=str(doc.get("kv_type_k", kv)),
        kv_type_v=str(doc.get("kv_type_v", kv)),
        kv_fallback=None if fallback is None else str(fallback),
        threads=int(doc.get("threads", -1)),
        n_ctx=int(doc.get("n_ctx", -1)),
        n_ubatch=int(doc.get("n_ubatch", -1)),
        seed=None if seed is None else int(seed),
        api=str(doc.get("api", "")),
    )


@dataclass(frozen=True, kw_only=True)
class TraceTensor:
    """One intermediate tensor of a trace, as the manifest (``trace.json``) describes it.

    The array is float32 of ``shape``: ggml's ``ne`` reversed from the token axis down, the
    token axis first and holding only ``positions`` (``[n_positions, n_embd]``; Q/K/V after
    the reshape ``[n_positions, n_head, head_dim]``).
    """

    index: int  # place in execution order among the written tensors
    name: str  # as llama.cpp names it: "attn_norm-0", "Qcur-0", "result_output", ...
    layer: int | None  # from the "-<il>" suffix
    op: str  # ggml op of the kept node (the last node with this name)
    n_nodes: int  # how many graph nodes carried this name
    ops: tuple[str, ...]  # the ops of all of them, in execution order
    node: int  # ordinal of the kept node among all evaluated graph nodes
    source_type: str  # the tensor's ggml type: "f32", "f16" or "bf16"
    ne: tuple[int, ...]  # ggml's ne[0..3]
    token_dim: int  # which ne index is the token axis
    shape: tuple[int, ...]
    positions: tuple[int, ...]
    path: Path
    nbytes: int  # size of the .npy file

    def load(self, *, mmap: bool = True) -> npt.NDArray[np.float32]:
        """The array (a read-only memory map unless ``mmap`` is false), checked against the manifest."""
        return _load_array(self.path, self.shape, mmap=mmap)


@dataclass(frozen=True, kw_only=True)
class TraceFilters:
    layers: tuple[int, int] | None  # inclusive range; tensors without a layer are kept
    names: str | None  # ECMAScript regular expression matched against the whole name
    positions: tuple[int, ...] | None


@dataclass(frozen=True, kw_only=True)
class TraceResult:
    out_dir: Path
    tokens: tuple[int, ...]
    positions: tuple[int, ...]  # the token positions every tensor holds
    filters: TraceFilters
    tensors: tuple[TraceTensor, ...]  # in execution order
    skipped: dict[str, tuple[str, ...]]  # names never written, by reason
    logits_path: Path  # [n_tokens, n_vocab] float32, as `logits` computes them
    manifest: dict[str, Any]
    metadata: dict[str, Any]  # the shim's stdout document

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    def tensor(self, name: str) -> TraceTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"the trace in {self.out_dir} has no tensor {name!r}")

    def array(self, name: str) -> npt.NDArray[np.float32]:
        return self.tensor(name).load()

    def logits(self) -> npt.NDArray[np.float32]:
        return _load_array(self.logits_path, (len(self.tokens), int(self.manifest["n_vocab"])), mmap=True)

    @property
    def run(self) -> RunReport:
        return run_report(self.metadata)


@dataclass(frozen=True, kw_only=True)
class Quantization:
    out: Path
    type: str
    size_bytes: int
    metadata: dict[str, Any]


class Shim:
    """Runs one built ``bitnet-shim`` executable.

    ``log_dir``: where llama.cpp's log of each call is kept (``shim-<command>.log``);
    without it the log is discarded and only the shim's one-line error reaches the caller.
    """

    def __init__(
        self,
        executable: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        timeout: float | None = None,
    ) -> None:
        self.executable = Path(executable)
        self._env = dict(env) if env is not None else None
        self._log_dir = log_dir
        self._timeout = timeout

    def info(self, model: Path | None = None, *, load_weights: bool = False) -> dict[str, Any]:
        """Build facts (API generation, backend commit, flags) and, with a model, its facts.

        The model is loaded vocabulary-only unless ``load_weights``, so vocabulary files work.
        """
        args = ["info"]
        if model is not None:
            args += ["--model", str(model), "--weights", _flag(load_weights)]
        return self._run(args)

    def tokenize(self, model: Path, text: str, *, add_bos: bool, parse_special: bool) -> Tokenization:
        doc, _ = self._call(
            "tokenize", model, text=text, options=["--add-bos", _flag(add_bos), "--parse-special", _flag(parse_special)]
        )
        return Tokenization(tokens=_ints(doc, "tokens"), pieces=_hex_pieces(doc), metadata=doc)

    def detokenize(
        self,
        model: Path,
        tokens: Sequence[int],
        *,
        remove_special: bool = False,
        unparse_special: bool = False,
    ) -> Detokenization:
        """Token ids back to text with ``llama_detokenize`` (defaults as llama.cpp's
        ``common_detokenize``: keep special tokens, do not render them)."""
        options = ["--remove-special", _flag(remove_special), "--unparse-special", _flag(unparse_special)]
        doc, _ = self._call("detokenize", model, tokens=tokens, options=options)
        text_bytes = bytes.fromhex(str(doc.get("text_hex", "")))
        return Detokenization(
            text=text_bytes.decode("utf-8", errors="replace"),
            text_bytes=text_bytes,
            pieces=_hex_pieces(doc),
            metadata=doc,
        )

    def logits(
        self,
        model: Path,
        tokens: Sequence[int],
        *,
        threads: int = DEFAULT_THREADS,
        kv_type: KvType = DEFAULT_KV_TYPE,
        out_dir: Path | None = None,
        block: int | None = None,
        progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        log_tag: str | None = None,
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Logits of every position, ``[n_tokens, n_vocab]`` float32, evaluated causally: in one
        batch, or ``block`` tokens per ``llama_decode`` call with the KV cache carrying the
        earlier ones (the shim writes each block's rows to the file before the next).

        With ``out_dir`` the array is a read-only memory map of a file left there; without it
        the array is read into memory and no file is kept. ``progress`` hears how many
        positions the shim has evaluated, after each block. Setting ``stop`` interrupts the
        shim (then the call fails): how work run beside another is called off. ``log_tag``
        names the call's own log (``shim-logits-TAG.log``), so that two calls running at once
        do not share one.
        """
        options = _run_options(threads, kv_type)
        if block is not None:
            options += ["--block", str(block)]
        if progress is not None:
            options += ["--progress", "1"]
        doc, array = self._call(
            "logits",
            model,
            tokens=tokens,
            options=options,
            out=_NpyOut(flag="--out", rows=len(tokens), directory=out_dir),
            on_progress=progress,
            stop=stop,
            log_tag=log_tag,
        )
        assert array is not None
        return array, doc

    def generate(
        self,
        model: Path,
        tokens: Sequence[int],
        *,
        n: int,
        threads: int = DEFAULT_THREADS,
        kv_type: KvType = DEFAULT_KV_TYPE,
        out_dir: Path | None = None,
    ) -> Generation:
        """Greedy continuation of ``tokens`` by ``n`` tokens, with the logits each was chosen from."""
        doc, array = self._call(
            "generate",
            model,
            tokens=tokens,
            options=["--n", str(n), *_run_options(threads, kv_type)],
            out=_NpyOut(flag="--out-logits", rows=n, directory=out_dir),
        )
        assert array is not None
        return Generation(tokens=_ints(doc, "tokens"), logits=array, metadata=doc)

    def trace(
        self,
        model: Path,
        tokens: Sequence[int],
        *,
        out_dir: Path,
        layers: int | tuple[int, int] | None = None,
        names: str | None = None,
        positions: Sequence[int] | None = None,
        threads: int = DEFAULT_THREADS,
        kv_type: KvType = DEFAULT_KV_TYPE,
    ) -> TraceResult:
        """The intermediate tensors of one causal batch (the evaluation of :meth:`logits`).

        ``out_dir`` must not exist or be empty; it appears only when the trace is complete.
        ``layers`` (one layer or an inclusive range), ``names`` (a regular expression over the
        whole name) and ``positions`` bound what is copied and written.
        """
        options = ["--out-dir", str(out_dir), *_run_options(threads, kv_type)]
        if layers is not None:
            first, last = (layers, layers) if isinstance(layers, int) else layers
            options += ["--layers", f"{first}-{last}"]
        if names is not None:
            options += ["--names", names]
        if positions is not None:
            options += ["--positions", ",".join(str(int(p)) for p in positions)]
        doc, _ = self._call("trace", model, tokens=tokens, options=options)
        return _trace_result(Path(out_dir), doc)

    def quantize(
        self,
        model: Path,
        out: Path,
        type: str,
        *,
        threads: int = DEFAULT_THREADS,
        allow_requantize: bool = False,
    ) -> Quantization:
        """Quantize ``model`` to ``type`` ("Q4_K_M", "Q8_0", ...) with llama.cpp's own quantiser.

        ``out`` is replaced atomically; ``info()["quantize_types"]`` lists the types.
        ``allow_requantize`` lets llama.cpp read tensors that are already quantised (with
        ``type`` F32, F16 or BF16 this dequantises them with the backend's own code).
        """
        doc = self._run(
            [
                "quantize",
                "--model", str(model),
                "--out", str(out),
                "--type", type,
                "--threads", str(threads),
                "--allow-requantize", _flag(allow_requantize),
            ]
        )  # fmt: skip
        return Quantization(out=Path(out), type=type, size_bytes=int(doc.get("size_bytes_out", -1)), metadata=doc)

    # --- running ---

    def _call(
        self,
        command: str,
        model: Path,
        *,
        tokens: Sequence[int] | None = None,
        text: str | None = None,
        options: Sequence[str] = (),
        out: _NpyOut | None = None,
        on_progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        log_tag: str | None = None,
    ) -> tuple[dict[str, Any], npt.NDArray[np.float32] | None]:
        """Run ``command`` on ``model`` with its inputs in files of a private temporary directory
        (token ids as JSON, text as UTF-8 bytes), and read the array it writes when ``out`` asks."""
        with tempfile.TemporaryDirectory(prefix="bitnet-shim-") as tmp:
            args = [command, "--model", str(model)]
            if tokens is not None:
                args += ["--tokens-file", str(_write_tokens(Path(tmp), tokens))]
            if text is not None:
                text_file = Path(tmp) / "text.txt"
                text_file.write_bytes(text.encode("utf-8"))
                args += ["--text-file", str(text_file)]
            if out is None:
                return self._run([*args, *options], on_progress=on_progress, stop=stop, log_tag=log_tag), None
            out_path = _output_path(out.directory, Path(tmp), command)
            doc = self._run(
                [*args, out.flag, str(out_path), *options], on_progress=on_progress, stop=stop, log_tag=log_tag
            )
            return doc, _load_npy(out_path, rows=out.rows, doc=doc, keep=out.directory is not None)

    def _run(
        self,
        args: list[str],
        *,
        on_progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
        log_tag: str | None = None,
    ) -> dict[str, Any]:
        if not self.executable.is_file():
            raise BackendUnavailable(
                f"the reference shim {self.executable} does not exist",
                next_step="run `invoke rebuild` to build it against the installed backends",
            )
        log_path: Path | None = None
        stream_log = False
        if self._log_dir is not None:
            make_dir(self._log_dir)
            log_path = self._log_dir / (f"shim-{args[0]}-{log_tag}.log" if log_tag else f"shim-{args[0]}.log")
            args = [*args, "--log-file", str(log_path)]
        elif ui.is_verbose():
            # llama.cpp's log then arrives with the output; show it as debug lines.
            args = [*args, "--verbose"]
            stream_log = True
        on_line: Callable[[str], None] | None = ui.debug if stream_log else None
        if on_progress is not None:
            on_line = _progress_lines(on_progress, otherwise=on_line)
        try:
            result = proc.run(
                [str(self.executable), *args],
                env=self._env,
                check=False,
                timeout=self._timeout,
                on_line=on_line,
                stop=stop,
            )
        except ProgramCouldNotStart as exc:  # not executable, not a program, a bad ELF
            raise BackendUnavailable(
                f"the reference shim {self.executable} cannot be started: {exc.reason}",
                next_step="run `invoke rebuild` to build it again",
            ) from exc
        if result.returncode != 0:
            raise _error_for(args[0], result.returncode, result.output, log_path)
        return _json_document(args[0], result.output, log_path)


@dataclass(frozen=True, kw_only=True)
class _NpyOut:
    """Where a command writes its float32 array: the flag naming the file, the rows expected, and
    the directory to keep it in (None: read it and let it go with the temporary directory)."""

    flag: str
    rows: int
    directory: Path | None


_PROGRESS_PREFIX = "bitnet-shim: progress "


def _progress_lines(
    on_progress: Callable[[int], None], *, otherwise: Callable[[str], None] | None
) -> Callable[[str], None]:
    """An output-line handler that hands ``bitnet-shim: progress DONE/TOTAL`` lines' DONE to
    ``on_progress`` and every other line to ``otherwise``."""

    def handle(line: str) -> None:
        if line.startswith(_PROGRESS_PREFIX):
            done, _, _total = line[len(_PROGRESS_PREFIX) :].strip().partition("/")
            if done.isdigit():
                on_progress(int(done))
                return
        if otherwise is not None:
            otherwise(line)

    return handle


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _run_options(threads: int, kv_type: KvType) -> list[str]:
    return ["--threads", str(threads), "--kv-type", kv_type]


def _write_tokens(directory: Path, tokens: Sequence[int]) -> Path:
    path = directory / "tokens.json"
    path.write_text(json.dumps([int(t) for t in tokens]), encoding="utf-8")
    return path


def _output_path(out_dir: Path | None, tmp: Path, stem: str) -> Path:
    if out_dir is None:
        return tmp / f"{stem}.npy"
    make_dir(out_dir)
    try:
        fd, name = tempfile.mkstemp(prefix=f"{stem}-", suffix=".npy", dir=out_dir)
    except OSError as exc:
        raise os_error(exc, out_dir) from exc
    os.close(fd)  # a unique name; the shim replaces the empty file atomically
    return Path(name)


def _load_npy(path: Path, *, rows: int, doc: Mapping[str, Any], keep: bool) -> npt.NDArray[np.float32]:
    try:
        loaded = np.load(path, mmap_mode="r") if keep else np.load(path)
    except (OSError, ValueError) as exc:
        raise UnclassifiedError(f"the shim's output {path} is not a readable .npy file: {exc}") from exc
    array = cast("npt.NDArray[np.float32]", loaded)
    expected = (rows, int(doc.get("n_vocab", -1)))
    if array.dtype != np.float32 or array.shape != expected:
        raise UnclassifiedError(
            f"the shim wrote a {array.dtype} array of shape {array.shape}, expected float32 {expected}"
        )
    return array


def _load_array(path: Path, shape: tuple[int, ...], *, mmap: bool) -> npt.NDArray[np.float32]:
    try:
        loaded = np.load(path, mmap_mode="r") if mmap else np.load(path)
    except (OSError, ValueError) as exc:
        raise UnclassifiedError(f"the shim's output {path} is not a readable .npy file: {exc}") from exc
    array = cast("npt.NDArray[np.float32]", loaded)
    if array.dtype != np.float32 or array.shape != shape:
        raise UnclassifiedError(
            f"{path} holds a {array.dtype} array of shape {array.shape}, the manifest says float32 {shape}"
        )
    return array


def _trace_result(out_dir: Path, doc: dict[str, Any]) -> TraceResult:
    manifest_path = out_dir / str(doc.get("manifest", "trace.json"))
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnclassifiedError(f"the trace manifest {manifest_path} cannot be read: {exc}") from exc
    try:
        return _parse_manifest(out_dir, manifest, doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise UnclassifiedError(
            f"the trace manifest {manifest_path} is not in the expected format ({type(exc).__name__}: {exc})",
            next_step="rebuild the shim with `invoke rebuild` so it matches this version of the suite",
        ) from exc


def _parse_manifest(out_dir: Path, manifest: Any, doc: dict[str, Any]) -> TraceResult:
    if not isinstance(manifest, dict) or manifest.get("format") != TRACE_FORMAT:
        raise ValueError("not a bitnet-shim trace manifest")
    if manifest.get("version") != TRACE_FORMAT_VERSION:
        raise ValueError(f"version {manifest.get('version')!r}, this client reads {TRACE_FORMAT_VERSION}")
    tensors = tuple(
        TraceTensor(
            index=int(t["index"]),
            name=str(t["name"]),
            layer=None if t["layer"] is None else int(t["layer"]),
            op=str(t["op"]),
            n_nodes=int(t["n_nodes"]),
            ops=tuple(str(o) for o in t["ops"]),
            node=int(t["node"]),
            source_type=str(t["type"]),
            ne=tuple(int(n) for n in t["ne"]),
            token_dim=int(t["token_dim"]),
            shape=tuple(int(n) for n in t["shape"]),
            positions=tuple(int(p) for p in t["positions"]),
            path=out_dir / str(t["file"]),
            nbytes=int(t["bytes"]),
        )
        for t in manifest["tensors"]
    )
    raw_filters = manifest["filters"]
    layers = raw_filters["layers"]
    filters = TraceFilters(
        layers=None if layers is None else (int(layers[0]), int(layers[1])),
        names=None if raw_filters["names"] is None else str(raw_filters["names"]),
        positions=None if raw_filters["positions"] is None else tuple(int(p) for p in raw_filters["positions"]),
    )
    skipped = {str(reason): tuple(str(n) for n in names) for reason, names in manifest["skipped"].items()}
    return TraceResult(
        out_dir=out_dir,
        tokens=tuple(int(t) for t in manifest["tokens"]),
        positions=tuple(int(p) for p in manifest["positions"]),
        filters=filters,
        tensors=tensors,
        skipped=skipped,
        logits_path=out_dir / str(manifest["logits"]["file"]),
        manifest=manifest,
        metadata=doc,
    )


def _ints(doc: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(int(t) for t in doc.get(key, []))


def _hex_pieces(doc: Mapping[str, Any]) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(str(h)) for h in doc.get("pieces_hex", []))


def _json_document(command: str, output: str, log_path: Path | None) -> dict[str, Any]:
    # stdout and stderr arrive merged; the shim keeps llama.cpp's log off both, so the
    # document is the output, but take the last line that is a JSON object to be safe.
    for raw in reversed(output.splitlines()):
        line = raw.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    raise UnclassifiedError(
        f"`bitnet-shim {command}` succeeded but printed no JSON document",
        log_path=log_path,
        next_step="rebuild the shim with `invoke rebuild`; if it persists, report it with the log",
    )


def _error_line(output: str) -> str:
    prefix = "bitnet-shim: error: "
    for line in reversed(output.splitlines()):
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# Usage errors (exit 2) that are about paths or the backend rather than the tokens and text.
_USAGE_HINTS: tuple[tuple[str, str], ...] = (
    ("refusing to write to it", "give an output path that does not exist yet or is a regular file"),
    ("not a regular file", "pass a regular file (not a FIFO, device or directory)"),
    ("is not empty", "give a trace directory that does not exist yet or is empty"),
    ("not a directory", "give a trace directory that does not exist yet or is empty"),
    ("quantization type", "use one of the types `bitnet-shim info` lists under quantize_types"),
    ("--layers", "pick layers the model has (`bitnet-shim info --model M` reports n_layer)"),
    ("--positions", "pick positions inside the token sequence"),
    ("--names", "give --names a valid ECMAScript regular expression"),
)


def _error_for(command: str, code: int, output: str, log_path: Path | None) -> SuiteError:
    detail = _error_line(output)
    if code == EXIT_USAGE:
        if "cannot be traced" in detail or "cannot quantize" in detail:
            return BackendUnavailable(
                f"the reference backend cannot do this: {detail}",
                log_path=log_path,
                next_step="use a backend whose llama.h has what the command needs (a current llama.cpp has both)",
            )
        hint = next((step for phrase, step in _USAGE_HINTS if phrase in detail), None)
        return BadInput(
            f"the reference shim rejected its input: {detail}",
            log_path=log_path,
            next_step=hint or "check the token ids and text passed to the reference",
        )
    if code == EXIT_MODEL:
        return BadInput(
            f"the model cannot be loaded: {detail}",
            log_path=log_path,
            next_step="check the path and that the file is a complete GGUF (re-download or re-convert it)",
        )
    if code == EXIT_UNSUPPORTED:
        return BadInput(
            f"the backend does not support this model: {detail}",
            log_path=log_path,
            next_step="use a backend that knows this architecture and tensor type "
            "(BitNet I2_S/TL models need --backend bitnet)",
        )
    if code == EXIT_DECODE:
        if "could not create a context" in detail:
            return UnclassifiedError(
                f"llama.cpp refused to create a context: {detail}",
                log_path=log_path,
                next_step="use kv_type='auto' (the 2024 fork accepts only an F16 V cache without flash attention); "
                "rerun with --verbose to see llama.cpp's log",
            )
        return UnclassifiedError(
            f"llama.cpp failed to evaluate the model: {detail}",
            log_path=log_path,
            next_step="rerun with --verbose to see llama.cpp's log",
        )
    if code > 128:
        return UnclassifiedError(
            f"`bitnet-shim {command}` was killed by signal {code - 128}",
            log_path=log_path,
            next_step="rerun with --verbose; a crash inside llama.cpp usually means a model it cannot handle",
        )
    return UnclassifiedError(
        f"`bitnet-shim {command}` failed (exit {code}): {detail}",
        log_path=log_path,
    )
