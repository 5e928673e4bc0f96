"""``llama`` / ``bitnet``: one C++ backend, through its shim, as the candidate of another (or of
itself: a determinism check)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from bitnet_crossval.backends.specs import BACKEND_NAMES
from bitnet_crossval.crossval.candidates.base import (
    Candidate,
    CandidateOutput,
    CandidateSetting,
    CandidateSpec,
    ReferenceFacts,
    Traced,
    TraceRequest,
)
from bitnet_crossval.errors import BadInput

if TYPE_CHECKING:
    from bitnet_crossval.reference.client import KvType, Shim


@dataclass(frozen=True, kw_only=True)
class ShimSpec(CandidateSpec):
    backend: str


class BackendKind:
    heads: tuple[str, ...] = BACKEND_NAMES
    syntax: str = " or ".join(BACKEND_NAMES)

    def parse(self, text: str) -> CandidateSpec:
        if text not in BACKEND_NAMES:
            raise BadInput(
                f"--candidate {text!r}: a backend candidate takes no argument",
                next_step=f"use one of {', '.join(BACKEND_NAMES)}",
            )
        return ShimSpec(kind=text, text=text, backend=text)

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
        assert isinstance(spec, ShimSpec) and setting.shim_for is not None
        return ShimCandidate(
            spec.backend, setting.shim_for(spec.backend), threads=setting.threads, kv_type=setting.kv_type
        )


class ShimCandidate:
    def __init__(self, label: str, shim: Shim, *, threads: int, kv_type: KvType) -> None:
        self.label = label
        self.shim = shim
        self._threads = threads
        self._kv_type = kv_type

    def follow(self, reference: ReferenceFacts) -> Candidate:
        return self

    def run(self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace: bool) -> CandidateOutput:
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


KIND = BackendKind()
