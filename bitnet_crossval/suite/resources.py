"""How many cases run at once: what ``--jobs`` asks for, within the cores and the memory.

A case's ``crossval-per-token`` holds the model (the NumPy engine reads every weight into
memory) and two rows of logits per position besides the interpreter, and its shims map the model
and, on a quantised model, its float copy (about four times a 4-bit model). Measured on Gemma 3
270M Q4_K_M and summed over a case's processes at its fullest moment: about 5.2 times the model
file with the two references one after the other, 8.5 times side by side (which a case does
only with the cores for it: the runner gives each case its share). A case is reckoned at
``BASE + FACTOR x`` the largest model file of the cases still to run. More jobs than cores only
makes every case slower.
"""

from __future__ import annotations

from dataclasses import dataclass

BASE_BYTES = 300 << 20
MODEL_FACTOR = 9


@dataclass(frozen=True, kw_only=True)
class JobLimit:
    jobs: int
    capped: bool
    """Whether fewer than ``--jobs`` asked for."""
    reason: str
    """What bounds the number: the cores, the memory and a case's reckoned size."""


def job_limit(requested: int, *, largest_model: int, cores: int, memory: int | None) -> JobLimit:
    """``requested`` cases at once (0: as many as fit), never more than ``cores`` nor than the
    memory holds, never fewer than one."""
    per_case = BASE_BYTES + MODEL_FACTOR * largest_model
    by_memory = max(1, memory // per_case) if memory is not None else None
    fit = min(cores, by_memory) if by_memory is not None else cores
    jobs = max(1, fit if requested == 0 else min(requested, fit))
    memory_text = f", {memory / (1 << 30):.1f} GB available" if memory is not None else ""
    return JobLimit(
        jobs=jobs,
        capped=requested > jobs,
        reason=f"{cores} cores{memory_text}, about {per_case / (1 << 20):.0f} MB per case",
    )
