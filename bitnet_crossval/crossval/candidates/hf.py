"""``hf`` and ``hf:PATH``: Hugging Face transformers on the model under test (``hf``), or on a
Hugging Face checkpoint directory to check a conversion (``hf:PATH``), in a child process
(:mod:`bitnet_crossval.crossval.hf`). Needs the ``hf`` extra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.crossval.candidates.base import Candidate, CandidateSetting, CandidateSpec


@dataclass(frozen=True, kw_only=True)
class HfSpec(CandidateSpec):
    checkpoint: Path | None = None


class HfKind:
    heads: tuple[str, ...] = ("hf",)
    syntax: str = "hf[:CHECKPOINT_DIR]"

    def parse(self, text: str) -> CandidateSpec:
        from bitnet_crossval.crossval.hf.candidate import checkpoint_of

        return HfSpec(kind="hf", text=text, checkpoint=checkpoint_of(text))

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
        from bitnet_crossval.crossval.hf.candidate import HfCandidate
        from bitnet_crossval.store.layout import cache_root_from

        assert isinstance(spec, HfSpec)
        # torch's own thread count (one per core, or OMP_NUM_THREADS): the reference's default
        # of one thread is for the reference's determinism, and would only slow the forward pass
        # (benchmarks/measure_hf.py: 0.32 s on two threads, 0.48 s on one, Gemma 3 270M).
        return HfCandidate(
            spec.label,
            checkpoint=spec.checkpoint,
            env=setting.env,
            n_vocab=setting.n_vocab,
            timeout=setting.timeout,
            cache_root=cache_root_from(setting.env),
            threads=None,
        )


KIND = HfKind()
