"""``py:module:function``: a Python callable ``f(model_path: str, tokens: np.ndarray)`` returning
the logits array, called in this process (with a ``trace`` keyword argument, a directory path,
when the function accepts one and a trace was asked for)."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.candidates.base import (
    Candidate,
    CandidateOutput,
    CandidateSetting,
    CandidateSpec,
    ReferenceFacts,
    Traced,
    TraceRequest,
    check_logits,
    traced_from_dir,
)
from bitnet_crossval.errors import BadInput, CandidateFailed, SuiteError


@dataclass(frozen=True, kw_only=True)
class PythonSpec(CandidateSpec):
    module: str
    function: str


class PythonKind:
    heads: tuple[str, ...] = ("py",)
    syntax: str = "py:module:function"

    def parse(self, text: str) -> CandidateSpec:
        target = text[len("py:") :]
        module, sep, function = target.rpartition(":")
        if not sep or not module or not function.isidentifier():
            raise BadInput(
                f"--candidate {text!r} is not py:module:function",
                next_step="name an importable module and a function in it, e.g. py:my_engine.crossval:logits",
            )
        return PythonSpec(kind="py", text=text, module=module, function=function)

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
        assert isinstance(spec, PythonSpec)
        return PythonCandidate(spec, n_vocab=setting.n_vocab)


class PythonCandidate:
    """A function in an importable module, called in this process."""

    def __init__(self, spec: PythonSpec, *, n_vocab: int) -> None:
        self.label = spec.label
        self._n_vocab = n_vocab
        self._function = load_function(spec)
        self.accepts_trace = _accepts_keyword(self._function, "trace")

    def follow(self, reference: ReferenceFacts) -> Candidate:
        return self

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
        return traced_from_dir(self.run(model, tokens, work_dir=work_dir, trace_dir=work_dir / "candidate-trace"))


def load_function(spec: PythonSpec) -> Callable[..., Any]:
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


KIND = PythonKind()
