"""Candidates: the implementations compared against the C++ reference, behind one interface.

A candidate takes a GGUF model and a sequence of token ids and returns the logits of every
position, ``[n_tokens, n_vocab]``, from one causal evaluation. ``--candidate`` names one:

- ``numpy`` (the default): the built-in engine (:mod:`bitnet_crossval.crossval.engine`);
  ``numpy:FAULT`` is the same engine with one deliberate bug (what the self-check runs);
- ``llama`` / ``bitnet``: a C++ backend through its shim, to compare the two references;
- ``cmd:<command line>``: any program, split with :func:`shlex.split` and run without a shell.
  ``{model}``, ``{tokens}`` (a ``.npy`` 1-D int32 array) and ``{out}`` (where it writes a
  ``.npy`` float32 array) are replaced in its arguments; with none of them, the three paths
  are appended in that order. ``{trace}`` (a directory) asks it to write intermediates too;
- ``py:module:function``: a Python callable ``f(model_path: str, tokens: np.ndarray)`` returning
  the array, called in this process (a ``trace`` keyword argument, a directory path, when
  the function accepts one and a trace was asked for).

The protocol, with a worked example, is in docs/howto/candidates.md.
"""

from __future__ import annotations

import importlib
import inspect
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import (
    BadInput,
    CandidateFailed,
    CommandFailed,
    CommandTimedOut,
    ProgramNotFound,
    SuiteError,
)

if TYPE_CHECKING:
    from bitnet_crossval.crossval.engine import EngineOptions
    from bitnet_crossval.reference.client import KvType, Shim

CandidateKind = Literal["numpy", "llama", "bitnet", "cmd", "py"]
PLACEHOLDERS = ("{model}", "{tokens}", "{out}")
TRACE_PLACEHOLDER = "{trace}"
DEFAULT_CANDIDATE_TIMEOUT = 600.0

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, kw_only=True)
class CandidateSpec:
    """A parsed ``--candidate`` value."""

    kind: CandidateKind
    text: str
    argv: tuple[str, ...] = ()
    module: str = ""
    function: str = ""
    """The function of py:module:function; for numpy:FAULT, the deliberate fault."""

    @property
    def label(self) -> str:
        return self.text

    @property
    def can_trace(self) -> bool:
        """Whether the candidate may write a trace (py: decided when the function is loaded)."""
        if self.kind == "cmd":
            return any(TRACE_PLACEHOLDER in arg for arg in self.argv)
        return True


def parse_candidate(text: str) -> CandidateSpec:
    """``--candidate``'s value; every problem is bad input found before anything runs."""
    raw = text.strip()
    if raw in ("", "numpy"):
        return CandidateSpec(kind="numpy", text="numpy")
    if raw.startswith("numpy:"):
        from bitnet_crossval.crossval.engine import FAULT_NAMES

        fault = raw[len("numpy:") :]
        if fault not in FAULT_NAMES:
            raise BadInput(
                f"--candidate {text!r}: {fault!r} is not a fault the numpy engine can make",
                next_step=f"use numpy:FAULT with FAULT one of {', '.join(FAULT_NAMES)}",
            )
        return CandidateSpec(kind="numpy", text=raw, function=fault)
    if raw in ("llama", "bitnet"):
        return CandidateSpec(kind=raw, text=raw)  # type: ignore[arg-type]
    if raw.startswith("cmd:"):
        command = raw[len("cmd:") :]
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise BadInput(
                f"--candidate {text!r}: the command line cannot be split ({exc})",
                next_step="check the quoting of the command after cmd:",
            ) from None
        if not argv:
            raise BadInput(f"--candidate {text!r} names no command", next_step="write the command after cmd:")
        return CandidateSpec(kind="cmd", text=raw, argv=argv)
    if raw.startswith("py:"):
        target = raw[len("py:") :]
        module, sep, function = target.rpartition(":")
        if not sep or not module or not function.isidentifier():
            raise BadInput(
                f"--candidate {text!r} is not py:module:function",
                next_step="name an importable module and a function in it, e.g. py:my_engine.crossval:logits",
            )
        return CandidateSpec(kind="py", text=raw, module=module, function=function)
    raise BadInput(
        f"--candidate {text!r} is not a candidate",
        next_step="use numpy, llama, bitnet, cmd:<command line> or py:module:function",
    )


@dataclass(frozen=True, kw_only=True)
class CandidateOutput:
    logits: F32Array
    seconds: float
    details: Mapping[str, Any] = field(default_factory=dict)
    trace_dir: Path | None = None
    """Where the candidate wrote its trace, when one was asked for and written."""


class Candidate(Protocol):
    label: str

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        """Logits of every position of ``tokens``; a trace into ``trace_dir`` when given and supported."""
        ...

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        """The candidate's intermediates by llama.cpp name, or None when it cannot trace."""
        ...


@dataclass(frozen=True, kw_only=True)
class TraceRequest:
    """What to trace: token positions, an inclusive layer range, a regular expression over names."""

    positions: list[int]
    layers: tuple[int, int] | None = None
    names: str | None = None


Traced = Mapping[str, Callable[[], F32Array]]


def check_logits(array: object, *, label: str, n_tokens: int, n_vocab: int) -> F32Array:
    """The candidate's output as float32 ``[n_tokens, n_vocab]`` with finite values, or a
    :class:`CandidateFailed` naming the candidate and what was expected."""
    expected = f"a float array of shape [n_tokens, n_vocab] = [{n_tokens}, {n_vocab}] with finite values"
    if not isinstance(array, np.ndarray):
        raise CandidateFailed(f"the candidate {label} returned {type(array).__name__}, expected {expected}")
    if array.dtype.kind != "f":
        raise CandidateFailed(f"the candidate {label} returned dtype {array.dtype}, expected {expected}")
    if array.shape != (n_tokens, n_vocab):
        shape = "[" + ", ".join(str(d) for d in array.shape) + "]"
        raise CandidateFailed(f"the candidate {label} returned shape {shape}, expected {expected}")
    logits = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(logits)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise CandidateFailed(
            f"the candidate {label} returned non-finite values (NaN or infinity) at position "
            f"{int(bad_rows[0])} and {len(bad_rows) - 1} more, expected {expected}"
        )
    return logits


# --------------------------------------------------------------------------- numpy


class NumpyCandidate:
    """The built-in engine. It loads (and validates) the model when it is made, so an
    unsupported architecture or tensor type is reported before the reference runs."""

    def __init__(self, model: Path, options: EngineOptions) -> None:
        from bitnet_crossval.crossval.engine import load_engine

        self.label = "numpy"
        self.engine = load_engine(model, options)

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        started = time.monotonic()
        logits = self.engine.forward(tokens)
        details = self.engine.describe()
        return CandidateOutput(
            logits=np.asarray(logits, dtype=np.float32), seconds=time.monotonic() - started, details=details
        )

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        from bitnet_crossval.crossval.engine import TraceRecorder

        layers = range(request.layers[0], request.layers[1] + 1) if request.layers is not None else None
        recorder = TraceRecorder(
            layers=layers, name_regex=request.names, positions=request.positions, include_global=layers is None
        )
        self.engine.forward(tokens, trace=recorder)
        return {key: _constant(value) for key, value in recorder.entries.items()}


# --------------------------------------------------------------------------- llama / bitnet


class ShimCandidate:
    """One C++ backend as the candidate of another (or of itself: a determinism check)."""

    def __init__(self, label: str, shim: Shim, *, threads: int, kv_type: KvType) -> None:
        self.label = label
        self.shim = shim
        self._threads = threads
        self._kv_type = kv_type

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        started = time.monotonic()
        logits, doc = self.shim.logits(
            model, [int(t) for t in tokens], threads=self._threads, kv_type=self._kv_type, out_dir=work_dir
        )
        return CandidateOutput(logits=np.asarray(logits), seconds=time.monotonic() - started, details=doc)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        result = self.shim.trace(
            model,
            [int(t) for t in tokens],
            out_dir=work_dir / "candidate-trace",
            layers=request.layers,
            names=request.names,
            positions=request.positions,
            threads=self._threads,
            kv_type=self._kv_type,
        )
        return {t.name: t.load for t in result.tensors}


# --------------------------------------------------------------------------- cmd:


class CommandCandidate:
    """Any program: the argument protocol above, a time limit, its output tail on failure."""

    def __init__(self, spec: CandidateSpec, *, env: Mapping[str, str], n_vocab: int, timeout: float) -> None:
        self.label = spec.label
        self._argv = spec.argv
        self._env = env
        self._n_vocab = n_vocab
        self._timeout = timeout

    def argv_for(self, *, model: Path, tokens: Path, out: Path, trace: Path | None) -> list[str]:
        values = {"{model}": str(model), "{tokens}": str(tokens), "{out}": str(out)}
        values[TRACE_PLACEHOLDER] = str(trace) if trace is not None else ""
        argv = []
        for template in self._argv:
            filled = template
            for placeholder, value in values.items():
                filled = filled.replace(placeholder, value)
            argv.append(filled)
        if not any(p in arg for arg in self._argv for p in PLACEHOLDERS):
            argv += [str(model), str(tokens), str(out)]  # none of the three named: they go last, in order
        return argv

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        from bitnet_crossval.util import proc

        tokens_path = work_dir / "candidate-tokens.npy"
        out = work_dir / "candidate-logits.npy"
        np.save(tokens_path, np.asarray(tokens, dtype=np.int32))
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv_for(model=model, tokens=tokens_path, out=out, trace=trace_dir)
        started = time.monotonic()
        try:
            proc.run(argv, env=self._env, timeout=self._timeout, log_path=work_dir / "candidate.log")
        except ProgramNotFound as exc:
            raise BadInput(
                f"the candidate {self.label}: `{exc.program}` was not found",
                next_step="check the command after cmd: (an absolute path avoids PATH surprises)",
            ) from exc
        except CommandTimedOut as exc:
            raise CandidateFailed(
                f"the candidate {self.label} did not finish within {exc.timeout:g}s and was stopped",
                next_step="raise --candidate-timeout, or check the candidate for a hang",
                detail=exc.output_tail,
            ) from exc
        except CommandFailed as exc:
            raise CandidateFailed(
                f"the candidate {self.label} exited with code {exc.returncode}",
                next_step="read the candidate's output above and fix it",
                detail=exc.output_tail,
            ) from exc
        seconds = time.monotonic() - started
        try:
            array = np.load(out, allow_pickle=False)
        except FileNotFoundError:
            raise CandidateFailed(
                f"the candidate {self.label} finished but wrote no {out.name}",
                next_step="write a float32 .npy of shape [n_tokens, n_vocab] to the {out} path",
            ) from None
        except (OSError, ValueError) as exc:
            reason = "it is not in NumPy's .npy format" if "pickled" in str(exc) or "magic" in str(exc) else str(exc)
            raise CandidateFailed(
                f"the candidate {self.label} wrote {out.name}, which is not a readable .npy file ({reason})",
                next_step="write it with numpy.save (float32, shape [n_tokens, n_vocab])",
            ) from exc
        logits = check_logits(array, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        written_trace = trace_dir if trace_dir is not None and any(trace_dir.iterdir()) else None
        return CandidateOutput(logits=logits, seconds=seconds, details={"argv": argv}, trace_dir=written_trace)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        if not any(TRACE_PLACEHOLDER in arg for arg in self._argv):
            return None
        return _traced_from_dir(self.run(model, tokens, work_dir=work_dir, trace_dir=work_dir / "candidate-trace"))


# --------------------------------------------------------------------------- py:


class PythonCandidate:
    """A function in an importable module, called in this process."""

    def __init__(self, spec: CandidateSpec, *, n_vocab: int) -> None:
        self.label = spec.label
        self._n_vocab = n_vocab
        self._function = load_function(spec)
        self.accepts_trace = _accepts_keyword(self._function, "trace")

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        kwargs: dict[str, Any] = {}
        if trace_dir is not None and self.accepts_trace:
            trace_dir.mkdir(parents=True, exist_ok=True)
            kwargs["trace"] = str(trace_dir)
        started = time.monotonic()
        try:
            array = self._function(str(model), np.asarray(tokens, dtype=np.int32).copy(), **kwargs)
        except SuiteError:
            raise
        except Exception as exc:
            reason = " ".join(str(exc).split()) or "(no message)"
            raise CandidateFailed(
                f"the candidate {self.label} raised {type(exc).__name__}: {reason}",
                next_step="rerun with --verbose for the traceback",
            ) from exc
        seconds = time.monotonic() - started
        logits = check_logits(array, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        written_trace = trace_dir if "trace" in kwargs and trace_dir is not None and any(trace_dir.iterdir()) else None
        return CandidateOutput(logits=logits, seconds=seconds, trace_dir=written_trace)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        if not self.accepts_trace:
            return None
        return _traced_from_dir(self.run(model, tokens, work_dir=work_dir, trace_dir=work_dir / "candidate-trace"))


def _constant(value: F32Array) -> Callable[[], F32Array]:
    return lambda: value


def _traced_from_dir(output: CandidateOutput) -> Traced:
    from bitnet_crossval.crossval.trace import read_trace_dir

    return read_trace_dir(output.trace_dir) if output.trace_dir is not None else {}


def load_function(spec: CandidateSpec) -> Callable[..., Any]:
    """The callable ``py:module:function`` names; the current directory is importable, as it is
    for ``python -m``, so a module of the user's own repository is found."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(spec.module)
    except Exception as exc:
        raise BadInput(
            f"the candidate {spec.label}: module {spec.module!r} cannot be imported "
            f"({type(exc).__name__}: {' '.join(str(exc).split())})",
            next_step="run from the directory that holds the module, or install it into this environment",
        ) from exc
    function = getattr(module, spec.function, None)
    if not callable(function):
        raise BadInput(
            f"the candidate {spec.label}: {spec.module} has no function {spec.function!r}",
            next_step="name a function defined in that module",
        )
    return function  # type: ignore[no-any-return]


def _accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def placeholders_used(argv: Sequence[str]) -> list[str]:
    return [p for p in (*PLACEHOLDERS, TRACE_PLACEHOLDER) if any(p in arg for arg in argv)]
