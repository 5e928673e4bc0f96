"""Talking to a built C++ reference shim (``bitnet-shim``).

:class:`Shim` runs the executable: inputs go to files in a private temporary directory, JSON
comes back on stdout and arrays as ``.npy`` files. The protocol is documented in
``docs/reference/shim.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BackendUnavailable, BadInput, SuiteError, UnclassifiedError
from bitnet_crossval.store.layout import make_dir, os_error
from bitnet_crossval.util import proc, ui

KvType = Literal["f32", "f16"]

# bitnet-shim's exit codes (cpp/src/errors.h).
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_UNSUPPORTED = 4
EXIT_DECODE = 5

DEFAULT_THREADS = 1
DEFAULT_KV_TYPE: KvType = "f32"


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
        with tempfile.TemporaryDirectory(prefix="bitnet-shim-") as tmp:
            text_file = Path(tmp) / "text.txt"
            text_file.write_bytes(text.encode("utf-8"))
            doc = self._run(
                [
                    "tokenize",
                    "--model", str(model),
                    "--text-file", str(text_file),
                    "--add-bos", _flag(add_bos),
                    "--parse-special", _flag(parse_special),
                ]
            )  # fmt: skip
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
        with tempfile.TemporaryDirectory(prefix="bitnet-shim-") as tmp:
            tokens_file = _write_tokens(Path(tmp), tokens)
            doc = self._run(
                [
                    "detokenize",
                    "--model", str(model),
                    "--tokens-file", str(tokens_file),
                    "--remove-special", _flag(remove_special),
                    "--unparse-special", _flag(unparse_special),
                ]
            )  # fmt: skip
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
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        """Logits of every position, ``[n_tokens, n_vocab]`` float32, evaluated causally in one batch.

        With ``out_dir`` the array is a read-only memory map of a file left there; without it
        the array is read into memory and no file is kept.
        """
        with tempfile.TemporaryDirectory(prefix="bitnet-shim-") as tmp:
            tokens_file = _write_tokens(Path(tmp), tokens)
            out = _output_path(out_dir, Path(tmp), "logits")
            doc = self._run(
                [
                    "logits",
                    "--model", str(model),
                    "--tokens-file", str(tokens_file),
                    "--out", str(out),
                    "--threads", str(threads),
                    "--kv-type", kv_type,
                ]
            )  # fmt: skip
            array = _load_npy(out, rows=len(tokens), doc=doc, keep=out_dir is not None)
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
        with tempfile.TemporaryDirectory(prefix="bitnet-shim-") as tmp:
            tokens_file = _write_tokens(Path(tmp), tokens)
            out = _output_path(out_dir, Path(tmp), "generate")
            doc = self._run(
                [
                    "generate",
                    "--model", str(model),
                    "--tokens-file", str(tokens_file),
                    "--n", str(n),
                    "--out-logits", str(out),
                    "--threads", str(threads),
                    "--kv-type", kv_type,
                ]
            )  # fmt: skip
            array = _load_npy(out, rows=n, doc=doc, keep=out_dir is not None)
        return Generation(tokens=_ints(doc, "tokens"), logits=array, metadata=doc)

    # --- running ---

    def _run(self, args: list[str]) -> dict[str, Any]:
        if not self.executable.is_file():
            raise BackendUnavailable(
                f"the reference shim {self.executable} does not exist",
                next_step="run `invoke rebuild` to build it against the installed backends",
            )
        log_path: Path | None = None
        stream_log = False
        if self._log_dir is not None:
            make_dir(self._log_dir)
            log_path = self._log_dir / f"shim-{args[0]}.log"
            args = [*args, "--log-file", str(log_path)]
        elif ui.is_verbose():
            # llama.cpp's log then arrives with the output; show it as debug lines.
            args = [*args, "--verbose"]
            stream_log = True
        result = proc.run(
            [str(self.executable), *args],
            env=self._env,
            check=False,
            timeout=self._timeout,
            on_line=ui.debug if stream_log else None,
        )
        if result.returncode != 0:
            raise _error_for(args[0], result.returncode, result.output, log_path)
        return _json_document(args[0], result.output, log_path)


def _flag(value: bool) -> str:
    return "1" if value else "0"


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


def _error_for(command: str, code: int, output: str, log_path: Path | None) -> SuiteError:
    detail = _error_line(output)
    if code == EXIT_USAGE:
        return BadInput(
            f"the reference shim rejected its input: {detail}",
            log_path=log_path,
            next_step="check the token ids and text passed to the reference",
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
