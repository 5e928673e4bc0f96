"""The ``hf`` candidate: Hugging Face transformers on the model under test, in a child process.

``hf`` runs transformers on the GGUF under test (transformers dequantises it itself); ``hf:PATH``
runs the Hugging Face checkpoint in PATH instead, to check a conversion: the GGUF on the
reference side, the original on the candidate side, the same token ids on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.candidates.base import CandidateOutput, Traced, TraceRequest, check_logits
from bitnet_crossval.crossval.hf.api import checkpoint_dir, run_hf
from bitnet_crossval.crossval.hf.availability import require_hf
from bitnet_crossval.util import ui

PREFIX = "hf"


def checkpoint_of(text: str) -> Path | None:
    """``hf`` -> None; ``hf:PATH`` -> the checkpoint directory (checked). Bad input otherwise."""
    if text == PREFIX:
        return None
    if not text.startswith(PREFIX + ":") or not text[len(PREFIX) + 1 :].strip():
        from bitnet_crossval.errors import BadInput

        raise BadInput(f"--candidate {text!r} is not hf or hf:PATH", next_step="use hf, or hf:DIR with a checkpoint")
    return checkpoint_dir(text[len(PREFIX) + 1 :].strip())


class HfCandidate:
    """Made before the reference runs, so a missing extra or a bad checkpoint is reported first."""

    def __init__(
        self,
        label: str,
        *,
        checkpoint: Path | None,
        env: Mapping[str, str],
        n_vocab: int,
        timeout: float | None,
        cache_root: Path | None,
        threads: int | None = None,
    ) -> None:
        require_hf()
        self.label = label
        self._checkpoint = checkpoint
        self._env = dict(env)
        self._n_vocab = n_vocab
        self._timeout = timeout
        self._cache_root = cache_root
        self._threads = threads

    def follow(self, reference: object) -> HfCandidate:
        """transformers computes in float32 whatever cache type the reference ran with."""
        return self

    def run(self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace: bool) -> CandidateOutput:
        trace_dir = work_dir / "candidate-trace" if trace else None
        result = run_hf(
            model=model,
            tokens=tokens,
            work_dir=work_dir,
            env=self._env,
            timeout=self._timeout,
            checkpoint=self._checkpoint,
            trace_dir=trace_dir,
            cache_root=self._cache_root,
            threads=self._threads,
            label=self.label,
            on_line=_progress,
        )
        logits = check_logits(result.logits, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        details = {**result.details, "argv": result.argv}
        return CandidateOutput(logits=logits, seconds=result.seconds, details=details, trace_dir=result.trace_dir)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        from bitnet_crossval.crossval.trace import read_trace_dir

        trace_dir = work_dir / "candidate-trace"
        result = run_hf(
            model=model,
            tokens=tokens,
            work_dir=work_dir,
            env=self._env,
            timeout=self._timeout,
            checkpoint=self._checkpoint,
            trace_dir=trace_dir,
            trace_positions=request.positions,
            trace_layers=request.layers,
            trace_names=request.names,
            cache_root=self._cache_root,
            threads=self._threads,
            label=self.label,
            on_line=_progress,
        )
        check_logits(result.logits, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        return read_trace_dir(result.trace_dir, label=self.label) if result.trace_dir is not None else {}


def _progress(line: str) -> None:
    """The child's own progress lines (``hf: ...``) as status lines; the rest stays in its log."""
    if line.startswith(("hf: ", "waiting for the lock")):
        ui.say(line)
