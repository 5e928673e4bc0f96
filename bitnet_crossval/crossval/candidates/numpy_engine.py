"""``numpy`` and ``numpy:FAULT``: the built-in engine, and the same with one deliberate bug (what
the self-check runs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

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
    constant,
)
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.npy_rows import NpyWriter

if TYPE_CHECKING:
    from bitnet_crossval.crossval.engine import Engine, EngineOptions


@dataclass(frozen=True, kw_only=True)
class NumpySpec(CandidateSpec):
    fault: str | None = None


class NumpyKind:
    heads: tuple[str, ...] = ("numpy",)
    syntax: str = "numpy[:FAULT]"

    def parse(self, text: str) -> CandidateSpec:
        if text == "numpy":
            return NumpySpec(kind="numpy", text="numpy")
        from bitnet_crossval.crossval.engine import FAULT_NAMES

        fault = text[len("numpy:") :]
        if fault not in FAULT_NAMES:
            raise BadInput(
                f"--candidate {text!r}: {fault!r} is not a fault the numpy engine can make",
                next_step=f"use numpy:FAULT with FAULT one of {', '.join(FAULT_NAMES)}",
            )
        return NumpySpec(kind="numpy", text=text, fault=fault)

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
        from bitnet_crossval.crossval.engine import EngineOptions, Fault, FaultName

        assert isinstance(spec, NumpySpec)
        fault = Fault(name=FaultName(spec.fault)) if spec.fault else None
        options = EngineOptions(bitnet_activation=setting.bitnet_activation, fault=fault, output_weights="stream")
        return NumpyCandidate(setting.model, options, progress=setting.progress)


class NumpyCandidate:
    """The built-in engine. It loads (and validates) the model when it is made, so an
    unsupported architecture or tensor type is reported before the reference runs.

    It evaluates as llama.cpp does a long sequence (``Engine.evaluate``: blocks of positions and
    a KV cache) and writes the logits into a file in the run's work directory, handed over as a
    read-only memory map, so its memory does not grow with the number of positions. The output matrix is streamed
    (``output_weights="stream"``): for a small model with a large vocabulary its float32 copy
    would be most of the memory (640 MiB of Gemma 3 270M's), and it is read once per run.
    """

    def __init__(
        self,
        model: Path,
        options: EngineOptions,
        *,
        progress: Callable[[float], None] | None = None,
        engine: Engine | None = None,
    ) -> None:
        from bitnet_crossval.crossval.engine import load_engine

        self.label = "numpy"
        self.engine = engine if engine is not None else load_engine(model, options)
        self._progress = progress

    def prepare(self, stop: threading.Event) -> None:
        """Dequantise the weights before the token ids are known (beside the reference's generation)."""
        self.engine.preload(stop)

    def prepare_bytes(self) -> int:
        return self.engine.preload_bytes()

    def follow(self, reference: ReferenceFacts) -> Candidate:
        if reference.kv_type_v == "f16" and self.engine.options.kv_cache != "f16":
            # The backend refused an F32 V cache (the 2024 bitnet.cpp fork): round as it does.
            # The same model file, with the weights it has dequantised already.
            from bitnet_crossval.crossval.engine import Engine

            engine = Engine(self.engine.model, replace(self.engine.options, kv_cache="f16"))
            return NumpyCandidate(self.engine.model.path, engine.options, progress=self._progress, engine=engine)
        return self

    def run(self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace: bool) -> CandidateOutput:
        started = time.monotonic()
        out = NpyWriter(work_dir / "candidate-logits.npy", len(tokens), self.engine.n_vocab)
        try:
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN is judged, not warned about
                self.engine.evaluate(tokens, out=out, progress=self._progress)
        finally:
            out.close()
        return CandidateOutput(logits=out.rows(), seconds=time.monotonic() - started, details=self.engine.describe())

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        from bitnet_crossval.crossval.engine import TraceRecorder

        layers = range(request.layers[0], request.layers[1] + 1) if request.layers is not None else None
        recorder = TraceRecorder(
            layers=layers, name_regex=request.names, positions=request.positions, include_global=layers is None
        )
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            self.engine.forward(tokens, trace=recorder)
        return {key: constant(value) for key, value in recorder.entries.items()}


KIND = NumpyKind()
