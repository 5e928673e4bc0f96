"""A fake ``bitnet-shim`` whose numbers come from the suite's own NumPy engine, so the
cross-validation flow can be unit-tested without C++ and without llama.cpp.

**What it imitates** (docs/reference/shim.md): the commands the cross-validation uses --
``info``, ``tokenize``, ``detokenize``, ``logits``, ``generate`` and ``trace`` -- with their
options (``--name value`` or ``--name=value``, ``--verbose``, ``--log-file``; an unknown,
repeated or valueless option is exit 2), one JSON document on one stdout line, and on failure
exactly one ``bitnet-shim: error: <reason>`` line with the real shim's exit code where the real
shim has one (token ids outside the vocabulary, bad ``--positions``/``--layers``, an output that
is not a regular file, a non-empty trace directory: 2; a missing or non-GGUF model: 3; a model
the engine cannot run: 4; an explicit KV type the backend refuses: 5). Arrays are float32 .npy
files renamed into place; ``trace`` writes the ``bitnet-shim-trace`` v1 manifest, one .npy per
tensor and ``logits.npy`` into a ``.partial`` sibling that is renamed onto the directory, with
the real shim's filters (``--layers`` keeps a tensor without a layer number on the input side
when the range holds layer 0 and on the output side when it holds the last layer; ``--names`` is
a regular expression over the whole name; ``--positions`` the rows written).

The reference is the engine without a fault: ``load_engine(model).forward(tokens)``, and a
:class:`TraceRecorder` for ``trace``. So the candidate ``numpy`` agrees with it exactly and every
``numpy:FAULT`` departs where its fault first changes the model.

**What it does not imitate**: llama.cpp. The tokenizer is a greedy longest match over the
model's vocabulary (SentencePiece's "▁" for a space, one added before the text, byte tokens for
what no piece covers), not llama.cpp's SPM or BPE algorithm; ``detokenize`` drops one leading
space. ``generate`` evaluates the whole sequence again for each new token instead of using a KV
cache (the same logits, by causality). An F16 KV cache, and the 2024 fork's F32 K / F16 V, are
the engine's ``kv_cache="f16"`` rounding. A traced tensor's ``op``/``ops`` are llama.cpp's names
for it from a table, not a graph's, and no tensor is ever skipped. ``quantize`` only dequantises
(to F32 or F16, by gguf-py's decoder: the float copy). Build facts (commit, library directory, flags) are
placeholders.

**Misbehaviours** for tests, from the environment: ``FAKE_SHIM_MISBEHAVE=COMMAND:MODE`` (COMMAND
a command name or ``*``; several pairs separated by commas) with MODE one of

- ``exit1`` ... ``exit5``: before any work, the error line (``FAKE_SHIM_MESSAGE``, or a sentence
  the real shim gives for that code) and that exit code;
- ``signal9``, ``signal11``, ...: killed by that signal, having printed nothing;
- ``no-json``: the command's work done, then exit 0 with a line on stdout that is not JSON;
- ``wrong-shape``: every logits array written one column wider than ``n_vocab`` says, and a
  trace's tensors written flat with one element more per position than the manifest's shape;
- ``inf-logit``: ``logits`` writes +infinity for the largest logit of the last position (as an
  output head that overflows would; ``n_nonfinite`` says so).

``FAKE_SHIM_KV=fork`` makes the backend refuse an F32 V cache as the 2024 bitnet.cpp fork does:
``--kv-type auto`` falls back to F32 K / F16 V and says why, ``--kv-type f32`` is exit 5.

**The executable and its speed.** The tests install :func:`client_script` as ``bitnet-shim``
(run by the test interpreter with ``-S``) and record it in a constants file as the ``llama``
backend's shim. On its own it loads this file and answers in its process, importing numpy and
the engine on every call (about a second). With ``FAKE_SHIM_SOCKET`` set it imports only
``os``, ``sys`` and ``_socket`` and forwards its command line, working directory and
``FAKE_SHIM_*`` variables to a server started once with ``python fake_shim.py fake-serve
SOCKET`` (a command the real shim does not have), which keeps the engines and memoises forward
passes by model file and token ids; the executable then plays the reply back (stdout, stderr,
then its exit code or the signal), so a caller sees the same process behaviour either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import numpy.typing as npt

    from bitnet_crossval.crossval.engine import Engine, GGUFModelFile

    F32Array = npt.NDArray[np.float32]

SOCKET_ENV = "FAKE_SHIM_SOCKET"
MISBEHAVE_ENV = "FAKE_SHIM_MISBEHAVE"
MESSAGE_ENV = "FAKE_SHIM_MESSAGE"
KV_ENV = "FAKE_SHIM_KV"
SERVE_COMMAND = "fake-serve"
READY_LINE = "fake-shim-server ready"

BACKEND = "llama"
BACKEND_COMMIT = "fa4e0000fa4e0000fa4e0000fa4e0000fa4e0000"
API = "current"
TRACE_FORMAT = "bitnet-shim-trace"
TRACE_VERSION = 1

# Exit codes of bitnet-shim (cpp/src/errors.h).
EXIT_OTHER, EXIT_USAGE, EXIT_MODEL, EXIT_UNSUPPORTED, EXIT_DECODE = 1, 2, 3, 4, 5

# The sentence a forced exit prints when FAKE_SHIM_MESSAGE does not give one: what the real shim
# says in a typical case of each code.
FORCED_MESSAGES = {
    EXIT_OTHER: "cannot write to stdout",
    EXIT_USAGE: "token id 99999 at index 0 is outside the vocabulary (n_vocab = 1)",
    EXIT_MODEL: "llama.cpp could not load the model (corrupt or incomplete?)",
    EXIT_UNSUPPORTED: "this backend does not support the model's architecture or tensor types",
    EXIT_DECODE: "llama_decode failed with code 1",
}

FORK_REFUSAL = "llama_new_context_with_model: V cache quantization requires flash_attn"

# GGUF token types (llama.cpp src/llama-vocab.cpp).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# The ggml ops llama.cpp reports for the tensors the engine names (the last op is the node a
# trace keeps).
_OPS: dict[str, tuple[str, ...]] = {
    "embd": ("GET_ROWS",),
    "inp_scaled": ("SCALE",),
    "Qcur": ("MUL_MAT", "RESHAPE", "ROPE"),
    "Kcur": ("MUL_MAT", "RESHAPE", "ROPE"),
    "Vcur": ("MUL_MAT", "RESHAPE"),
    "kqv_out": ("CONT",),
    "norm": ("RMS_NORM",),
    "ffn_swiglu": ("SWIGLU",),
    "ffn_sub_out": ("SWIGLU",),
    "ffn_geglu": ("GEGLU",),
    "ffn_inp": ("ADD",),
    "sa_out": ("ADD",),
    "l_out": ("ADD",),
}
_MUL_MAT_NAMES = frozenset({"attn_out", "ffn_gate", "ffn_up", "ffn_down", "ffn_out", "result_output"})

USAGE = """\
usage: bitnet-shim <command> [options]   (a fake: the suite's NumPy engine)

commands:
  info       [--model M [--weights 0|1]]
  tokenize   --model M --text-file F --add-bos 0|1 --parse-special 0|1
  detokenize --model M (--tokens-file F | --tokens LIST) --remove-special 0|1 --unparse-special 0|1
  logits     --model M (--tokens-file F | --tokens LIST) --out X.npy [--threads N]
             [--kv-type auto|f32|f16] [--seed S]
  generate   --model M (--tokens-file F | --tokens LIST) --n N --out-logits X.npy [--threads N]
             [--kv-type auto|f32|f16] [--seed S]
  trace      --model M (--tokens-file F | --tokens LIST) --out-dir DIR [--layers A-B]
             [--names REGEX] [--positions LIST] [--threads N] [--kv-type auto|f32|f16] [--seed S]
  quantize   --model M --out X.gguf --type F32|F16|BF16 [--threads N] [--allow-requantize 0|1]
"""

_RUN_OPTIONS = ("threads", "kv-type", "seed")
_STDERR_LINES = "_stderr_lines"  # what a handler's document says the call prints on stderr (not printed as JSON)
COMMANDS: dict[str, tuple[str, ...]] = {
    "info": ("model", "weights"),
    "tokenize": ("model", "text-file", "add-bos", "parse-special"),
    "detokenize": ("model", "tokens-file", "tokens", "remove-special", "unparse-special"),
    "logits": ("model", "tokens-file", "tokens", "out", "block", "progress", *_RUN_OPTIONS),
    "generate": ("model", "tokens-file", "tokens", "n", "out-logits", *_RUN_OPTIONS),
    "trace": ("model", "tokens-file", "tokens", "out-dir", "layers", "names", "positions", *_RUN_OPTIONS),
    "quantize": ("model", "out", "type", "threads", "allow-requantize"),
}


class Reply(TypedDict):
    """What one call prints and how it ends (``signal`` 0: it exits with ``code``)."""

    stdout: str
    stderr: str
    code: int
    signal: int


class ShimError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --------------------------------------------------------------------------- the command line


class Options:
    def __init__(self, command: str, values: dict[str, str]) -> None:
        self.command = command
        self.values = values

    def has(self, name: str) -> bool:
        return name in self.values

    def required(self, name: str) -> str:
        if name not in self.values:
            raise ShimError(EXIT_USAGE, f"{self.command} needs --{name}")
        return self.values[name]

    def flag01(self, name: str) -> bool:
        value = self.required(name)
        if value not in {"0", "1"}:
            raise ShimError(EXIT_USAGE, f"--{name} takes 0 or 1, not '{value}'")
        return value == "1"

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.values.get(name)
        if text is None:
            return default
        try:
            value = int(text, 10)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ShimError(EXIT_USAGE, f"--{name} takes an integer in [{low}, {high}], not '{text}'")
        return value


def parse_options(command: str, args: list[str]) -> Options:
    allowed = set(COMMANDS[command]) | {"log-file"}
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ShimError(EXIT_USAGE, f"unexpected argument '{arg}'")
        name, eq, value = arg[2:].partition("=")
        if name == "verbose":
            if eq:
                raise ShimError(EXIT_USAGE, "--verbose takes no value")
            value = "1"
        elif name in allowed:
            if not eq:
                if i + 1 >= len(args):
                    raise ShimError(EXIT_USAGE, f"--{name} needs a value")
                i += 1
                value = args[i]
        else:
            raise ShimError(EXIT_USAGE, f"unknown option --{name} for {command}")
        if name in values:
            raise ShimError(EXIT_USAGE, f"--{name} given twice")
        values[name] = value
        i += 1
    return Options(command, values)


def misbehaviour(env: Mapping[str, str], command: str) -> str | None:
    for item in env.get(MISBEHAVE_ENV, "").split(","):
        target, _, mode = item.strip().partition(":")
        if mode and target in {command, "*"}:
            return mode
    return None


# --------------------------------------------------------------------------- files


def _kind_of(mode: int) -> str:
    import stat

    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def read_input(path: str, what: str, code: int = EXIT_USAGE) -> bytes:
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ShimError(code, f"{what} not found: {path}") from None
    except OSError as exc:
        raise ShimError(code, f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ShimError(code, f"{what} {path} is {_kind_of(mode)}, not a regular file")
    with open(path, "rb") as handle:
        return handle.read()


def check_output_target(path: str, flag: str) -> None:
    import stat

    if not path:
        raise ShimError(EXIT_USAGE, f"{flag} path is empty")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise ShimError(
            EXIT_USAGE, f"{flag} {path} exists and is {_kind_of(mode)}, not a regular file; refusing to write to it"
        )


def write_npy(path: str, array: F32Array, *, in_new_directory: bool = False) -> int:
    """``array`` as float32 .npy at ``path``, through a new sibling renamed over it (straight into
    the file when ``in_new_directory``: a trace's ``.partial`` directory is renamed whole); its size."""
    import numpy as np

    if in_new_directory:
        with open(path, "xb") as handle:
            np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        return os.path.getsize(path)
    temp = _exclusive_sibling(path)
    try:
        with open(temp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return os.path.getsize(path)


def _exclusive_sibling(path: str) -> str:
    for n in range(1000):
        candidate = f"{path}.tmp-{os.getpid()}-{n}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        return candidate
    raise ShimError(EXIT_OTHER, f"cannot find a free temporary name next to {path}")


def parse_token_list(text: str, origin: str) -> list[int]:
    body = text.strip()
    if body.startswith("["):
        if not body.endswith("]"):
            raise ShimError(EXIT_USAGE, f"{origin}: a JSON array must end with ']'")
        body = body[1:-1]
    tokens: list[int] = []
    for word in body.replace(",", " ").split():
        try:
            tokens.append(int(word, 10))
        except ValueError:
            raise ShimError(EXIT_USAGE, f"{origin}: '{word}' is not a token id") from None
    return tokens


def read_tokens(opts: Options) -> list[int]:
    if opts.has("tokens-file") == opts.has("tokens"):
        raise ShimError(EXIT_USAGE, f"{opts.command} needs exactly one of --tokens-file or --tokens")
    if opts.has("tokens-file"):
        path = opts.required("tokens-file")
        return parse_token_list(read_input(path, "tokens file").decode("utf-8", errors="replace"), path)
    return parse_token_list(opts.required("tokens"), "--tokens")


def check_token_ids(tokens: list[int], n_vocab: int) -> None:
    for index, token in enumerate(tokens):
        if not 0 <= token < n_vocab:
            raise ShimError(
                EXIT_USAGE, f"token id {token} at index {index} is outside the vocabulary (n_vocab = {n_vocab})"
            )


# --------------------------------------------------------------------------- the model


class Vocabulary:
    """The model's tokens with a greedy longest-match tokenizer (not llama.cpp's algorithm)."""

    def __init__(self, model: GGUFModelFile) -> None:
        self.tokens = model.string_array("tokenizer.ggml.tokens")
        raw_types = model.numeric_array("tokenizer.ggml.token_type")
        self.types = [int(t) for t in raw_types] if raw_types is not None else [_NORMAL] * len(self.tokens)
        self.bos = int(model.get("tokenizer.ggml.bos_token_id", -1))
        self.eos = int(model.get("tokenizer.ggml.eos_token_id", -1))
        self.add_bos = bool(model.get("tokenizer.ggml.add_bos_token", True))
        self.pieces = {t: i for i, t in enumerate(self.tokens) if self.types[i] in {_NORMAL, _USER_DEFINED}}
        self.longest = max((len(t) for t in self.pieces), default=1)
        self.bytes = {int(t[3:5], 16): i for i, t in enumerate(self.tokens) if self.types[i] == _BYTE and len(t) == 6}
        self.special = {t: i for i, t in enumerate(self.tokens) if self.types[i] == _CONTROL}

    def tokenize(self, text: str, *, add_bos: bool, parse_special: bool) -> list[int]:
        ids = [self.bos] if add_bos and self.add_bos and self.bos >= 0 else []
        for i, (segment, special) in enumerate(self._segments(text, parse_special)):
            if special is not None:
                ids.append(special)
            else:
                ids += self._pieces_of(("▁" if i == 0 else "") + segment.replace(" ", "▁"))
        return ids

    def _segments(self, text: str, parse_special: bool) -> list[tuple[str, int | None]]:
        if not parse_special or not self.special:
            return [(text, None)]
        import re

        names = sorted(self.special, key=len, reverse=True)
        parts = re.split("(" + "|".join(re.escape(n) for n in names) + ")", text)
        return [(part, self.special.get(part) if k % 2 else None) for k, part in enumerate(parts) if part]

    def _pieces_of(self, text: str) -> list[int]:
        ids: list[int] = []
        start = 0
        while start < len(text):
            for length in range(min(self.longest, len(text) - start), 0, -1):
                token = self.pieces.get(text[start : start + length])
                if token is not None:
                    ids.append(token)
                    start += length
                    break
            else:
                for byte in text[start].replace("▁", " ").encode("utf-8"):
                    ids.append(self.bytes.get(byte, 0))
                start += 1
        return ids

    def piece(self, token: int, *, special: bool) -> bytes:
        kind = self.types[token]
        text = self.tokens[token]
        if kind == _BYTE and len(text) == 6:
            return bytes([int(text[3:5], 16)])
        if kind in {_CONTROL, _UNUSED}:
            return text.encode("utf-8") if special else b""
        return text.replace("▁", " ").encode("utf-8")


def model_facts(model: GGUFModelFile, vocab: Vocabulary) -> dict[str, Any]:
    arch = model.get_str("general.architecture", default="")

    def number(key: str) -> int | None:
        value = model.get(f"{arch}.{key}")
        return None if value is None else int(value)

    vocab_model = model.get_str("tokenizer.ggml.model", default="llama")
    return {
        "architecture": arch,
        "name": model.get_str("general.name", default=""),
        "vocab_size": len(vocab.tokens),
        "vocab_type": {"llama": "spm", "gpt2": "bpe", "bert": "wpm", "t5": "ugm"}.get(vocab_model, vocab_model),
        "context_length": number("context_length") or 0,
        "n_layer": number("block_count") or 0,
        "n_embd": number("embedding_length") or 0,
        "n_head": number("attention.head_count"),
        "n_head_kv": number("attention.head_count_kv"),
        "bos": vocab.bos,
        "eos": vocab.eos,
        "add_bos": vocab.add_bos,
    }


class Reference:
    """The engines the fake evaluates with, and its memoised forward passes (one per process;
    the server keeps one for all the calls it answers)."""

    def __init__(self, memo_size: int = 48) -> None:
        self._files: dict[tuple[Any, ...], tuple[GGUFModelFile, Vocabulary]] = {}
        self._engines: dict[tuple[Any, ...], Engine] = {}
        self._memo: dict[tuple[Any, ...], Any] = {}
        self._memo_size = memo_size

    def model(self, path: str) -> tuple[GGUFModelFile, Vocabulary]:
        from pathlib import Path

        from bitnet_crossval.crossval.engine import GGUFModelFile
        from bitnet_crossval.errors import BadInput

        key = _file_key(path)
        if key not in self._files:
            try:
                model = GGUFModelFile(Path(path))
            except BadInput:
                message = f"llama.cpp could not load the model (corrupt or incomplete?): {path}"
                raise ShimError(EXIT_MODEL, message) from None
            self._files[key] = (model, Vocabulary(model))
        return self._files[key]

    def engine(self, path: str, kv_cache: str) -> Engine:
        from bitnet_crossval.crossval.engine import EngineOptions, load_engine
        from bitnet_crossval.errors import BadInput

        key = (*_file_key(path), kv_cache)
        if key not in self._engines:
            try:
                self._engines[key] = load_engine(path, EngineOptions(kv_cache=kv_cache))  # type: ignore[arg-type]
            except BadInput as exc:
                raise ShimError(
                    EXIT_UNSUPPORTED,
                    f"this backend does not support the model's architecture or tensor types: {path} ({exc.message})",
                ) from None
        return self._engines[key]

    def logits(self, path: str, kv_cache: str, tokens: list[int], *, block: int | None = None) -> F32Array:
        """One batch (the engine's forward), or ``block`` tokens at a time with a KV cache."""

        def compute() -> F32Array:
            engine = self.engine(path, kv_cache)
            return (
                engine.forward(tokens)
                if block is None or block >= len(tokens)
                else engine.evaluate(tokens, block=block)
            )

        key = ("logits", *_file_key(path), kv_cache, tuple(tokens), block if block and block < len(tokens) else None)
        result: F32Array = self._memoised(key, compute)
        return result

    def trace(self, path: str, kv_cache: str, tokens: list[int]) -> dict[str, F32Array]:
        def compute() -> dict[str, F32Array]:
            from bitnet_crossval.crossval.engine import TraceRecorder

            recorder = TraceRecorder()
            logits = self.engine(path, kv_cache).forward(tokens, trace=recorder)
            return {**recorder.entries, "": logits}

        result: dict[str, F32Array] = self._memoised(("trace", *_file_key(path), kv_cache, tuple(tokens)), compute)
        return result

    def _memoised(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            while len(self._memo) >= self._memo_size:
                self._memo.pop(next(iter(self._memo)))
            self._memo[key] = compute()
        return self._memo[key]


def _file_key(path: str) -> tuple[Any, ...]:
    """A model file by identity and content version, so an edited file is never served stale."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ShimError(EXIT_MODEL, f"model file not found: {path}") from None
    return (os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns)


def open_model(reference: Reference, path: str) -> tuple[GGUFModelFile, Vocabulary]:
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ShimError(EXIT_MODEL, f"model file not found: {path}") from None
    if not stat.S_ISREG(mode):
        raise ShimError(EXIT_MODEL, f"model file {path} is {_kind_of(mode)}, not a regular file")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ShimError(EXIT_MODEL, f"not a GGUF file (the first bytes are not 'GGUF'): {path}")
    return reference.model(path)


# --------------------------------------------------------------------------- the evaluation settings


class RunConfig:
    """``--threads``/``--kv-type``/``--seed`` and the context the backend accepts for them."""

    def __init__(self, opts: Options, env: Mapping[str, str], n_ctx: int, n_batch: int) -> None:
        self.threads = opts.integer("threads", 1, 1, 1024)
        self.requested = opts.values.get("kv-type", "auto")
        if self.requested not in {"auto", "f32", "f16"}:
            raise ShimError(EXIT_USAGE, f"--kv-type takes auto, f32 or f16, not '{self.requested}'")
        opts.integer("seed", 42, 0, 0xFFFFFFFE)
        fork = env.get(KV_ENV) == "fork"
        self.fallback: str | None = None
        if self.requested == "f16":
            self.k, self.v = "f16", "f16"
        elif not fork:
            self.k, self.v = "f32", "f32"
        elif self.requested == "f32":
            raise ShimError(
                EXIT_DECODE, f"llama.cpp could not create a context with an f32 K / f32 V cache: {FORK_REFUSAL}"
            )
        else:
            self.k, self.v = "f32", "f16"
            self.fallback = f"f32 K / f32 V refused: {FORK_REFUSAL}"
        self.n_ctx = n_ctx
        self.n_batch = n_batch

    @property
    def engine_kv(self) -> str:
        return "f16" if self.v == "f16" else "f32"

    def fields(self) -> dict[str, Any]:
        return {
            "kv_type": self.k if self.k == self.v else "mixed",
            "kv_type_requested": self.requested,
            "kv_type_k": self.k,
            "kv_type_v": self.v,
            "kv_fallback": self.fallback,
            "threads": self.threads,
            "flash_attn": False,
            "causal": True,
            "gpu_layers": 0,
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_batch,
            "logits_all_param": False,
            "seed": None,  # the current API has no context seed
            **backend_fields(),
        }


def backend_fields() -> dict[str, Any]:
    return {"api": API, "backend": BACKEND, "backend_commit": BACKEND_COMMIT}


def pieces_fields(vocab: Vocabulary, tokens: list[int], *, special: bool) -> dict[str, Any]:
    pieces = [vocab.piece(t, special=special) for t in tokens]
    return {"pieces": [p.decode("utf-8", errors="replace") for p in pieces], "pieces_hex": [p.hex() for p in pieces]}


def widen(array: F32Array, wrong_shape: bool) -> F32Array:
    """The array as written: one column more than it should have under ``wrong-shape``."""
    import numpy as np

    if not wrong_shape:
        return array
    flat = array.reshape(array.shape[0], -1)
    return np.concatenate([flat, np.zeros((flat.shape[0], 1), dtype=np.float32)], axis=1)


def count_nonfinite(array: F32Array) -> int:
    import numpy as np

    return int(array.size - np.count_nonzero(np.isfinite(array)))


# --------------------------------------------------------------------------- the commands


class Call:
    """One command: its options, the environment's switches, the shared reference."""

    def __init__(self, opts: Options, env: Mapping[str, str], reference: Reference, *, mode: str) -> None:
        self.opts = opts
        self.env = env
        self.reference = reference
        self.wrong_shape = mode == "wrong-shape"
        self.inf_logit = mode == "inf-logit"


def run_info(call: Call) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "shim_version": "1",
        **backend_fields(),
        "api_features": {
            "flash_attn_control": "flash_attn_type",
            "memory_clear": "llama_memory_clear",
            "logits_all_param": False,
            "context_seed_param": False,
        },
        "trace_supported": True,
        "quantize_types": [],
        "build_flags": "",
        "lib_dir": "",
        "llama_h": "",
        "system_info": "fake bitnet-shim: the suite's NumPy engine",
    }
    if call.opts.has("model"):
        weights = call.opts.has("weights") and call.opts.flag01("weights")
        path = call.opts.required("model")
        model, vocab = open_model(call.reference, path)
        doc |= {"model": path, "weights_loaded": weights, **model_facts(model, vocab)}
        if weights:
            engine = call.reference.engine(path, "f32")
            doc |= {
                "description": f"{engine.hparams.architecture} (fake)",
                "n_params": sum(t.n_elements for t in model.tensors.values()),
                "size_bytes": os.path.getsize(path),
            }
    return doc


def run_tokenize(call: Call) -> dict[str, Any]:
    opts = call.opts
    path = opts.required("model")
    text_file = opts.required("text-file")
    add_bos = opts.flag01("add-bos")
    parse_special = opts.flag01("parse-special")
    text = read_input(text_file, "text file")
    _, vocab = open_model(call.reference, path)
    tokens = vocab.tokenize(text.decode("utf-8", errors="replace"), add_bos=add_bos, parse_special=parse_special)
    return {
        "tokens": tokens,
        "n_tokens": len(tokens),
        **pieces_fields(vocab, tokens, special=True),
        "add_bos": add_bos,
        "parse_special": parse_special,
        "text_bytes": len(text),
        **backend_fields(),
    }


def run_detokenize(call: Call) -> dict[str, Any]:
    opts = call.opts
    path = opts.required("model")
    remove_special = opts.flag01("remove-special")
    unparse_special = opts.flag01("unparse-special")
    tokens = read_tokens(opts)
    _, vocab = open_model(call.reference, path)
    check_token_ids(tokens, len(vocab.tokens))
    kept = list(tokens)
    if remove_special and kept and vocab.add_bos and kept[0] == vocab.bos:
        kept = kept[1:]
    if remove_special and kept and kept[-1] == vocab.eos:
        kept = kept[:-1]
    text = b"".join(vocab.piece(t, special=unparse_special) for t in kept)
    if text.startswith(b" "):
        text = text[1:]  # the space tokenizing put before the text
    return {
        "tokens": tokens,
        **pieces_fields(vocab, tokens, special=unparse_special),
        "text": text.decode("utf-8", errors="replace"),
        "text_hex": text.hex(),
        "remove_special": remove_special,
        "unparse_special": unparse_special,
        **backend_fields(),
    }


def run_logits(call: Call) -> dict[str, Any]:
    opts = call.opts
    path = opts.required("model")
    out = opts.required("out")
    check_output_target(out, "--out")
    tokens = read_tokens(opts)
    block = min(opts.integer("block", len(tokens), 1, 1 << 24), max(1, len(tokens)))
    progress = opts.has("progress") and opts.flag01("progress")
    config = RunConfig(opts, call.env, len(tokens), block)
    if not tokens:
        raise ShimError(EXIT_USAGE, "logits needs at least one token")
    _, vocab = open_model(call.reference, path)
    check_token_ids(tokens, len(vocab.tokens))
    logits = call.reference.logits(path, config.engine_kv, tokens, block=block)
    if call.inf_logit:
        logits = logits.copy()
        logits[-1, int(logits[-1].argmax())] = float("inf")
    write_npy(out, widen(logits, call.wrong_shape))
    n_calls = -(-len(tokens) // block)
    # The real shim prints these on stderr as each block's rows are written.
    lines = [
        f"bitnet-shim: progress {min(done, len(tokens))}/{len(tokens)}"
        for done in range(block, len(tokens) + block, block)
    ]
    return {
        _STDERR_LINES: lines if progress else [],
        "out": out,
        "n_tokens": len(tokens),
        "n_vocab": len(vocab.tokens),
        "dtype": "float32",
        "block": block,
        "n_decode_calls": n_calls,
        "n_nonfinite": count_nonfinite(logits),
        **pieces_fields(vocab, tokens, special=False),
        **config.fields(),
    }


def run_generate(call: Call) -> dict[str, Any]:
    import numpy as np

    opts = call.opts
    path = opts.required("model")
    out = opts.required("out-logits")
    check_output_target(out, "--out-logits")
    if not opts.has("n"):
        raise ShimError(EXIT_USAGE, "generate needs --n")
    n_new = opts.integer("n", 1, 1, 1 << 20)
    prompt = read_tokens(opts)
    config = RunConfig(opts, call.env, len(prompt) + n_new, len(prompt))
    if not prompt:
        raise ShimError(EXIT_USAGE, "generate needs at least one prompt token")
    _, vocab = open_model(call.reference, path)
    check_token_ids(prompt, len(vocab.tokens))
    sequence = list(prompt)
    rows: list[F32Array] = []
    for _ in range(n_new):
        row = call.reference.logits(path, config.engine_kv, sequence)[-1]
        rows.append(row)
        finite = np.where(np.isfinite(row), row, -np.inf)
        sequence.append(int(np.argmax(finite)) if np.isfinite(finite).any() else 0)  # the lowest id on a tie
    generated = sequence[len(prompt) :]
    logits = np.stack(rows).astype(np.float32)
    write_npy(out, widen(logits, call.wrong_shape))
    return {
        "tokens": generated,
        "n_generated": len(generated),
        "n_prompt": len(prompt),
        **pieces_fields(vocab, generated, special=True),
        "eog": [t == vocab.eos for t in generated],
        "out_logits": out,
        "n_vocab": len(vocab.tokens),
        "dtype": "float32",
        "sampling": "greedy",
        "n_nonfinite": count_nonfinite(logits),
        **config.fields(),
    }


def _parse_range(text: str) -> tuple[int, int] | None:
    first, dash, last = text.partition("-")
    if not first.isdigit() or (dash and not last.isdigit()) or len(first) > 9 or len(last) > 9:
        return None
    a, b = int(first), int(last) if dash else int(first)
    return (a, b) if a <= b else None


def parse_positions(text: str, n_tokens: int) -> list[int]:
    positions: set[int] = set()
    for item in text.split(","):
        span = _parse_range(item)
        if span is None:
            raise ShimError(EXIT_USAGE, f"--positions takes a list like 0,5,7-9, not '{text}'")
        if span[1] >= n_tokens:
            raise ShimError(
                EXIT_USAGE, f"--positions {text}: position {span[1]} is past the last token ({n_tokens} tokens)"
            )
        positions.update(range(span[0], span[1] + 1))
    return sorted(positions)


def sanitized_file(name: str, used: set[str]) -> str:
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
    if not stem or stem.startswith("."):
        stem = "_" + stem
    file = f"{stem}.npy"
    k = 2
    while file in used:
        file = f"{stem}~{k}.npy"
        k += 1
    used.add(file)
    return file


def ops_of(name: str) -> tuple[str, ...]:
    if name in _OPS:
        return _OPS[name]
    return ("MUL_MAT",) if name in _MUL_MAT_NAMES else ("MUL",)


class PendingDir:
    """``--out-dir``: new or empty; everything goes into a ``.partial`` sibling renamed onto it."""

    def __init__(self, target: str) -> None:
        import stat

        if not target:
            raise ShimError(EXIT_USAGE, "--out-dir path is empty")
        self.target = target.rstrip("/") or "/"
        try:
            mode = os.stat(self.target).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISDIR(mode):
                raise ShimError(
                    EXIT_USAGE,
                    f"--out-dir {self.target} exists and is {_kind_of(mode)}, not a directory; refusing to write to it",
                )
            if os.listdir(self.target):
                raise ShimError(EXIT_USAGE, f"--out-dir {self.target} is not empty; give a new or an empty directory")
        parent = os.path.dirname(os.path.abspath(self.target))
        if not os.path.isdir(parent):
            raise ShimError(EXIT_USAGE, f"the parent of --out-dir {self.target} is not an existing directory")
        base = os.path.basename(os.path.abspath(self.target))
        for n in range(1000):
            candidate = os.path.join(parent, f".{base}.partial-{os.getpid()}-{n}")
            try:
                os.mkdir(candidate)
            except FileExistsError:
                continue
            self.temp = candidate
            return
        raise ShimError(EXIT_OTHER, f"cannot find a free temporary name next to {self.target}")

    def commit(self) -> None:
        os.replace(self.temp, self.target)

    def discard(self) -> None:
        import shutil

        shutil.rmtree(self.temp, ignore_errors=True)


class TraceFilters:
    """``--layers``, ``--names`` and ``--positions``, applied as the real shim applies them."""

    def __init__(self, opts: Options, n_tokens: int) -> None:
        import re

        self.layers: tuple[int, int] | None = None
        if opts.has("layers"):
            text = opts.required("layers")
            self.layers = _parse_range(text)
            if self.layers is None:
                raise ShimError(EXIT_USAGE, f"--layers takes a layer range A-B (or one layer A), not '{text}'")
        self.names = opts.values.get("names")
        try:
            self.pattern = re.compile(self.names) if self.names is not None else None
        except re.error as exc:
            raise ShimError(EXIT_USAGE, f"--names '{self.names}' is not a valid regular expression ({exc})") from None
        self.positions = parse_positions(opts.required("positions"), n_tokens) if opts.has("positions") else None
        self.rows = self.positions if self.positions is not None else list(range(n_tokens))

    def check_layers(self, n_layer: int) -> None:
        if self.layers is not None and self.layers[0] >= n_layer:
            first, last = self.layers
            raise ShimError(
                EXIT_USAGE,
                f"--layers {first}-{last} selects no layer of this model ({n_layer} layers, 0-{n_layer - 1})",
            )

    def kept(self, names: list[str], n_layer: int) -> list[str]:
        """The names a trace writes, in execution order. Without a layer number a name is on the
        input side until the first layered one, then on the output side."""
        kept = []
        seen_layered = False
        for name in names:
            layer = _layer_of(name)
            seen_layered = seen_layered or layer >= 0
            in_layers = self._in_layers(layer, output_side=seen_layered, n_layer=n_layer)
            if in_layers and (self.pattern is None or self.pattern.fullmatch(name) is not None):
                kept.append(name)
        return kept

    def _in_layers(self, layer: int, *, output_side: bool, n_layer: int) -> bool:
        if self.layers is None:
            return True
        first, last = self.layers
        if layer >= 0:
            return first <= layer <= last
        return last >= n_layer - 1 if output_side else first == 0

    def to_json(self) -> dict[str, Any]:
        return {"layers": list(self.layers) if self.layers else None, "names": self.names, "positions": self.positions}


def write_tensor(
    directory: str, name: str, array: F32Array, *, node: int, rows: list[int], wrong_shape: bool, used: set[str]
) -> dict[str, Any]:
    """One traced tensor's file (its ``rows`` on the token axis) and its manifest entry."""
    layer = _layer_of(name)
    ops = ops_of(name.rsplit("-", 1)[0] if layer >= 0 else name)
    selected = array[rows]
    file = sanitized_file(name, used)
    return {
        "name": name,
        "layer": layer if layer >= 0 else None,
        "op": ops[-1],
        "n_nodes": len(ops),
        "ops": list(ops),
        "node": node,
        "type": "f32",
        "ne": [*reversed(array.shape[1:]), array.shape[0], *[1] * (4 - array.ndim)],
        "token_dim": array.ndim - 1,
        "shape": list(selected.shape),
        "dtype": "float32",
        "file": file,
        # under wrong-shape the file disagrees with the shape the manifest gives
        "bytes": write_npy(os.path.join(directory, file), widen(selected, wrong_shape), in_new_directory=True),
        "positions": rows,
    }


def run_trace(call: Call) -> dict[str, Any]:
    opts = call.opts
    path = opts.required("model")
    out_dir = opts.required("out-dir")
    tokens = read_tokens(opts)
    config = RunConfig(opts, call.env, len(tokens), len(tokens))
    if not tokens:
        raise ShimError(EXIT_USAGE, "trace needs at least one token")
    filters = TraceFilters(opts, len(tokens))
    pending = PendingDir(out_dir)
    try:
        model, vocab = open_model(call.reference, path)
        facts = model_facts(model, vocab)
        n_layer = int(facts["n_layer"])
        check_token_ids(tokens, len(vocab.tokens))
        filters.check_layers(n_layer)
        traced = dict(call.reference.trace(path, config.engine_kv, tokens))
        logits = traced.pop("")
        nodes = {name: node for node, name in enumerate(traced)}
        used = {"trace.json", "logits.npy"}
        tensors = [
            {"index": index}
            | write_tensor(
                pending.temp,
                name,
                traced[name],
                node=nodes[name],
                rows=filters.rows,
                wrong_shape=call.wrong_shape,
                used=used,
            )
            for index, name in enumerate(filters.kept(list(traced), n_layer))
        ]
        logits_file = os.path.join(pending.temp, "logits.npy")
        logits_bytes = write_npy(logits_file, widen(logits, call.wrong_shape), in_new_directory=True)
        manifest = {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "model": path,
            "architecture": facts["architecture"],
            "n_layer": n_layer,
            "n_embd": facts["n_embd"],
            "n_vocab": len(vocab.tokens),
            "n_tokens": len(tokens),
            "tokens": tokens,
            "positions": filters.rows,
            "filters": filters.to_json(),
            "tensors": tensors,
            "n_graph_nodes": len(traced),
            "n_unnamed_nodes": 0,
            "n_filtered_nodes": len(traced) - len(tensors),
            "skipped": {},
            "logits": {"file": "logits.npy", "shape": [len(tokens), len(vocab.tokens)]},
            **config.fields(),
        }
        text = json.dumps(manifest) + "\n"
        with open(os.path.join(pending.temp, "trace.json"), "x", encoding="utf-8") as handle:
            handle.write(text)
        pending.commit()
    except BaseException:
        pending.discard()
        raise
    tensor_bytes = sum(int(t["bytes"]) for t in tensors)
    return {
        "out_dir": pending.target,
        "manifest": "trace.json",
        "logits": "logits.npy",
        "n_tokens": len(tokens),
        "n_vocab": len(vocab.tokens),
        "positions": filters.rows,
        "filters": filters.to_json(),
        "n_tensors": len(tensors),
        "n_graph_nodes": len(traced),
        "tensor_bytes": tensor_bytes,
        "bytes_written": tensor_bytes + logits_bytes + len(text),
        "bytes_copied": sum(int(a.nbytes) for a in traced.values()),
        "n_nonfinite": count_nonfinite(logits),
        "n_decode_calls": 1,
        **config.fields(),
    }


def _layer_of(name: str) -> int:
    _, dash, digits = name.rpartition("-")
    return int(digits) if dash and digits.isdigit() and len(digits) <= 9 else -1


def run_quantize(call: Call) -> dict[str, Any]:
    """Only the dequantisation the float copy asks for (type F32, F16 or BF16 with
    ``--allow-requantize 1``): every tensor written as that float type by gguf-py's decoder,
    the metadata not carried over (the float copy takes it from the model itself)."""
    import gguf
    import numpy as np

    target = call.opts.required("type")
    float_types = {"F32": gguf.GGMLQuantizationType.F32, "F16": gguf.GGMLQuantizationType.F16}
    if target not in float_types or not (call.opts.has("allow-requantize") and call.opts.flag01("allow-requantize")):
        raise ShimError(EXIT_USAGE, f"this fake backend only dequantises (to F32 or F16), not to {target}")
    model = call.opts.required("model")
    _file_key(model)  # a missing model is exit 3, as for every command
    out = call.opts.required("out")
    reader = gguf.GGUFReader(model)
    writer = gguf.GGUFWriter(out + ".partial", str(reader.fields["general.architecture"].contents()))
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(
            np.float32 if target == "F32" else np.float16
        )
        writer.add_tensor(tensor.name, values.reshape([int(n) for n in reversed(tensor.shape)]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(out + ".partial", out)
    return {"type": target, "size_bytes_out": os.path.getsize(out)}


HANDLERS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "info": run_info,
    "tokenize": run_tokenize,
    "detokenize": run_detokenize,
    "logits": run_logits,
    "generate": run_generate,
    "trace": run_trace,
    "quantize": run_quantize,
}


# --------------------------------------------------------------------------- one call


def respond(argv: list[str], env: Mapping[str, str], reference: Reference) -> Reply:
    """Everything one run of ``bitnet-shim ARGV`` prints, and how it ends."""
    if argv[:1] in (["--help"], ["-h"], ["help"]):
        return Reply(stdout=USAGE, stderr="", code=0, signal=0)
    log_file: str | None = None
    try:
        if not argv:
            raise ShimError(EXIT_USAGE, "no command given; run `bitnet-shim --help`")
        command = argv[0]
        if command not in COMMANDS:
            raise ShimError(EXIT_USAGE, f"unknown command '{command}'; run `bitnet-shim --help`")
        opts = parse_options(command, argv[1:])
        log_file = opts.values.get("log-file")
        _log(log_file, f"fake bitnet-shim {command}: evaluated by the suite's NumPy engine")
        mode = misbehaviour(env, command) or ""
        if mode.startswith("exit") and mode[4:].isdigit():
            code = int(mode[4:])
            raise ShimError(code, env.get(MESSAGE_ENV) or FORCED_MESSAGES.get(code, "forced failure"))
        if mode.startswith("signal") and mode[6:].isdigit():
            return Reply(stdout="", stderr="", code=0, signal=int(mode[6:]))
        doc = HANDLERS[command](Call(opts, env, reference, mode=mode))
        if mode == "no-json":
            return Reply(stdout="fake bitnet-shim: done, and no document\n", stderr="", code=0, signal=0)
        stderr = "".join(line + "\n" for line in doc.pop(_STDERR_LINES, []))
        stderr += "fake bitnet-shim: llama.cpp's log would be here\n" if opts.has("verbose") else ""
        return Reply(stdout=json.dumps(doc, allow_nan=False) + "\n", stderr=stderr, code=0, signal=0)
    except ShimError as exc:
        line = " ".join(exc.message.splitlines())
        _log(log_file, f"error: {line}")
        return Reply(stdout="", stderr=f"bitnet-shim: error: {line}\n", code=exc.code, signal=0)


def _log(path: str | None, line: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


# --------------------------------------------------------------------------- the executable

CLIENT = """\
#!{python} -S
\"\"\"bitnet-shim for the suite's unit tests: a fake whose work {implementation} does (see there).

With FAKE_SHIM_SOCKET set, the command line goes to that server and its reply is played back;
otherwise the implementation runs in this process. Only os, sys and _socket are imported on the
forwarding path (and no site-packages: the -S above), so a forwarded call starts quickly.
\"\"\"
import os
import sys

IMPLEMENTATION = {implementation!r}


def fail(message):
    os.write(2, ("bitnet-shim: error: " + message + "\\n").encode("utf-8", "replace"))
    sys.exit(1)


def forward(socket_path):
    import _socket

    items = ["cwd:" + os.getcwd()]
    items += ["env:%s=%s" % (k, v) for k, v in os.environ.items() if k.startswith("FAKE_SHIM_")]
    items += ["arg:" + arg for arg in sys.argv[1:]]
    chunks = []
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
        conn.sendall("\\0".join(items).encode("utf-8", "surrogateescape"))
        conn.shutdown(_socket.SHUT_WR)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        fail("the fake shim's server at %s did not answer (%s)" % (socket_path, exc))
    finally:
        conn.close()
    head, _, body = b"".join(chunks).partition(b"\\n")
    try:
        code, signal = (int(word) for word in head.split())
    except ValueError:
        fail("the fake shim's server at %s answered %r, which is not a reply" % (socket_path, head[:80]))
    out, _, err = body.partition(b"\\0")
    os.write(1, out)
    os.write(2, err)
    if signal:
        os.kill(os.getpid(), signal)
    sys.exit(code)


def run_here():
    import importlib.util
    import site

    site.main()  # the engine needs site-packages
    spec = importlib.util.spec_from_file_location("fake_shim", IMPLEMENTATION)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(sys.argv[1:])


if os.environ.get("FAKE_SHIM_SOCKET"):
    forward(os.environ["FAKE_SHIM_SOCKET"])
run_here()
"""


def client_script(python: str) -> str:
    """The text of the ``bitnet-shim`` executable: run by ``python``, answered by this file."""
    return CLIENT.format(python=python, implementation=os.path.abspath(__file__))


def play(reply: Reply) -> NoReturn:
    """End this process as the reply says."""
    sys.stdout.write(reply["stdout"])
    sys.stdout.flush()
    sys.stderr.write(reply["stderr"])
    sys.stderr.flush()
    if reply["signal"]:
        os.kill(os.getpid(), reply["signal"])
    sys.exit(reply["code"])


# --------------------------------------------------------------------------- the server


def decode_request(data: bytes) -> tuple[str, dict[str, str], list[str]]:
    """The executable's request: ``cwd:``, ``env:KEY=VALUE`` and ``arg:`` items separated by NUL."""
    cwd, env, argv = "/", {}, []
    for item in data.decode("utf-8", "surrogateescape").split("\0"):
        kind, _, value = item.partition(":")
        if kind == "cwd":
            cwd = value
        elif kind == "env":
            key, _, text = value.partition("=")
            env[key] = text
        elif kind == "arg":
            argv.append(value)
    return cwd, env, argv


def encode_reply(reply: Reply) -> bytes:
    """``CODE SIGNAL``, a newline, stdout, NUL, stderr (neither ever holds a NUL)."""
    head = f"{reply['code']} {reply['signal']}\n".encode("ascii")
    out, err = (reply[stream].encode("utf-8", "surrogateescape") for stream in ("stdout", "stderr"))
    return head + out + b"\0" + err


def serve(socket_path: str) -> None:
    """Answer calls on ``socket_path`` one at a time until terminated, or until the process that
    started this one is gone."""
    import signal

    import bitnet_crossval.crossval.engine  # noqa: F401  (imported once, before the first call)

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # so the socket file is removed
    parent = os.getppid()
    reference = Reference()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(socket_path)
        try:
            _answer_calls(server, reference, parent)
        finally:
            os.unlink(socket_path)


def _answer_calls(server: socket.socket, reference: Reference, parent: int) -> None:
    import traceback

    server.listen(8)
    server.settimeout(1.0)
    print(READY_LINE, flush=True)
    while os.getppid() == parent:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.settimeout(None)
            chunks = []
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
            cwd, env, argv = decode_request(b"".join(chunks))
            try:
                os.chdir(cwd)
                reply = respond(argv, env, reference)
            except Exception as exc:
                detail = " ".join(traceback.format_exception_only(type(exc), exc)).strip()
                traceback.print_exc(file=sys.stderr)
                reply = Reply(
                    stdout="", stderr=f"bitnet-shim: error: fake shim bug: {detail}\n", code=EXIT_OTHER, signal=0
                )
            with contextlib.suppress(OSError):  # the caller may be gone (stopped by its timeout)
                conn.sendall(encode_reply(reply))


def main(argv: list[str]) -> None:
    """``fake-serve SOCKET`` runs the server; anything else is one call, answered here."""
    if argv[:1] == [SERVE_COMMAND] and len(argv) == 2:
        serve(argv[1])
        return
    play(respond(argv, os.environ, Reference()))


if __name__ == "__main__":
    main(sys.argv[1:])
