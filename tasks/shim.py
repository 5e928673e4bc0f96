"""The C++ reference shim (``cpp/``): building it against one backend, and talking to it.

:func:`build_shim` configures and compiles ``cpp/`` against a backend install given as plain
directories and reports which llama.cpp C API generation CMake detected. :class:`Shim` runs
the resulting ``bitnet-shim`` executable: inputs go to files in a private temporary directory,
JSON comes back on stdout and arrays as ``.npy`` files. The protocol is documented in
``docs/reference/shim.md``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from tasks import cmake, proc, ui
from tasks.errors import (
    BackendUnavailable,
    BadInput,
    BuildFailed,
    CommandFailed,
    SuiteError,
    UnclassifiedError,
)
from tasks.fsutil import remove_tree, write_json_atomic
from tasks.paths import make_dir, os_error, repo_root

ApiGeneration = Literal["current", "legacy"]
KvType = Literal["f32", "f16"]

EXECUTABLE_NAME = "bitnet-shim.exe" if sys.platform == "win32" else "bitnet-shim"
CONFIGURE_STAMP = "bitnet-shim-configure.json"

# bitnet-shim's exit codes (cpp/src/errors.h).
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_MODEL = 3
EXIT_UNSUPPORTED = 4
EXIT_DECODE = 5

DEFAULT_THREADS = 1
DEFAULT_KV_TYPE: KvType = "f32"


def shim_source_dir() -> Path:
    return repo_root() / "cpp"


# ===== building ================================================================================


@dataclass(frozen=True, kw_only=True)
class ShimBuild:
    """A compiled shim and what it was compiled against."""

    executable: Path
    api: ApiGeneration
    backend: str
    backend_commit: str
    build_dir: Path
    log_path: Path


def build_shim(
    *,
    include_dirs: Sequence[Path],
    lib_dir: Path,
    build_dir: Path,
    log_path: Path,
    env: Mapping[str, str],
    backend: str,
    backend_commit: str,
    build_flags: str,
    source_dir: Path | None = None,
) -> ShimBuild:
    """Configure and build ``cpp/`` against one backend; incremental in ``build_dir``.

    The configure step is skipped when its inputs are unchanged since the last successful
    one (CMake itself re-runs it when ``CMakeLists.txt`` or the backend's ``llama.h``
    changes), so a repeated call costs one no-op ``cmake --build``.
    """
    source = source_dir or shim_source_dir()
    _check_backend_layout(include_dirs, lib_dir)
    make_dir(log_path.parent)
    generator = cmake.preferred_generator(env)
    _discard_build_dir_of_other_generator(build_dir, generator)
    make_dir(build_dir)

    definitions = {
        "CMAKE_BUILD_TYPE": "Release",
        "SHIM_INCLUDE_DIRS": ";".join(str(Path(d).absolute()) for d in include_dirs),
        "SHIM_LIB_DIR": str(Path(lib_dir).absolute()),
        "SHIM_BACKEND": backend,
        "SHIM_BACKEND_COMMIT": backend_commit,
        "SHIM_BUILD_FLAGS": build_flags,
    }
    configure = ["cmake", "-S", str(source), "-B", str(build_dir)]
    if generator:
        configure += ["-G", generator]
    configure += [f"-D{key}={value}" for key, value in definitions.items()]
    stamp = {"argv": configure}
    stamp_path = build_dir / CONFIGURE_STAMP
    cache_path = build_dir / "CMakeCache.txt"

    if not (cache_path.exists() and _read_json(stamp_path) == stamp):
        ui.debug(f"configuring the shim for {backend} in {build_dir}")
        stamp_path.unlink(missing_ok=True)
        try:
            proc.run(configure, env=env, log_path=log_path)
        except CommandFailed as exc:
            raise BuildFailed(
                f"configuring the shim against {backend} ({lib_dir}) failed",
                log_path=log_path,
                next_step=(
                    "read the log: a missing llama.h/libllama or an unrecognised llama.cpp C API is "
                    "reported there; check the backend install or rerun `invoke setup-cpp-auto`"
                ),
            ) from exc
        write_json_atomic(stamp_path, stamp)

    try:
        # --config matters only to multi-config generators (Visual Studio, Xcode).
        proc.run(["cmake", "--build", str(build_dir), "--config", "Release"], env=env, log_path=log_path)
    except CommandFailed as exc:
        raise BuildFailed(
            f"compiling the shim against {backend} ({lib_dir}) failed",
            log_path=log_path,
            next_step="read the compiler errors in the log; the headers may not belong to these libraries",
        ) from exc

    api = _api_from_cache(cache_path, log_path)
    executable = _find_executable(build_dir, log_path)
    try:
        reported = Shim(executable, env=env).info()
    except SuiteError as exc:
        raise BuildFailed(
            f"the shim was built but does not run: {exc.message}",
            log_path=log_path,
            next_step=f"check that {lib_dir} holds the libraries the headers belong to",
        ) from exc
    if reported.get("api") != api:
        raise BuildFailed(
            f"the shim reports API {reported.get('api')!r} but CMake selected {api!r}",
            log_path=log_path,
            next_step=f"delete {build_dir} and rerun the build",
        )
    return ShimBuild(
        executable=executable,
        api=api,
        backend=backend,
        backend_commit=backend_commit,
        build_dir=build_dir,
        log_path=log_path,
    )


def _check_backend_layout(include_dirs: Sequence[Path], lib_dir: Path) -> None:
    if not include_dirs:
        raise BuildFailed(
            "no include directories were given for the shim build",
            next_step="pass the backend's <prefix>/include (and ggml's include dir if separate)",
        )
    for path in [*include_dirs, lib_dir]:
        if ";" in str(path):
            # CMake splits list values on ';' and offers no escape that survives every layer.
            raise BuildFailed(
                f"the path {path} contains ';', which CMake cannot take in a list",
                next_step="move the backend install to a path without ';'",
            )
    if not any((Path(d) / "llama.h").is_file() for d in include_dirs):
        raise BuildFailed(
            f"llama.h was not found in {', '.join(str(d) for d in include_dirs)}",
            next_step="point LLAMA_CPP_DIR / BITNET_CPP_DIR at an install with include/llama.h, "
            "or run `invoke setup-cpp-auto`",
        )
    if not Path(lib_dir).is_dir():
        raise BuildFailed(
            f"the library directory {lib_dir} does not exist",
            next_step="point LLAMA_CPP_DIR / BITNET_CPP_DIR at an install with lib/libllama, "
            "or run `invoke setup-cpp-auto`",
        )


def _discard_build_dir_of_other_generator(build_dir: Path, generator: str | None) -> None:
    """CMake refuses to switch generators in place; a stale build dir is rebuilt from scratch."""
    cached = cmake.read_cache(build_dir).get("CMAKE_GENERATOR")
    if cached is None:
        return
    if (generator is not None and cached != generator) or (generator is None and cached == "Ninja"):
        ui.debug(f"{build_dir} was configured with {cached}, not {generator or 'the default'}: starting over")
        remove_tree(build_dir)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _api_from_cache(cache_path: Path, log_path: Path) -> ApiGeneration:
    api = cmake.read_cache(cache_path.parent).get("BITNET_SHIM_API")
    if api == "current":
        return "current"
    if api == "legacy":
        return "legacy"
    raise BuildFailed(
        f"the shim's CMake cache records no API generation ({cache_path})",
        log_path=log_path,
        next_step=f"delete {cache_path.parent} and rerun the build",
    )


def _find_executable(build_dir: Path, log_path: Path) -> Path:
    # Multi-config generators (Visual Studio, Xcode) put it under the configuration name.
    for candidate in (build_dir / EXECUTABLE_NAME, build_dir / "Release" / EXECUTABLE_NAME):
        if candidate.is_file():
            return candidate
    raise BuildFailed(
        f"the build finished but {EXECUTABLE_NAME} is not in {build_dir}",
        log_path=log_path,
        next_step=f"delete {build_dir} and rerun the build",
    )


# ===== talking to the shim =======================================================================


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
