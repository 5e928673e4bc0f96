"""Which reference judges a candidate on a quantised model: the model as given, its float copy, or both.

On a quantised model llama.cpp rounds the activations to 8 bits before every quantised matrix
product, so there are two references worth comparing with (docs/explanation/verdict.md):

- ``native``: the model as given, the backend's own arithmetic, rounding included;
- ``dequantized``: the backend run on the model's float copy
  (:func:`~bitnet_crossval.reference.dequantize.float_copy`), the same weights without the
  rounding of the activations: what an exact float engine computes.

``auto`` (the default) runs both on the same token ids and decides **from the whole run** which
one the candidate follows: the model as given when the candidate is clearly nearer it
(:data:`NATIVE_MARGIN` times, by the mean KL over every position), else the float copy. Deciding
position by position would let a small bug hide, at each position, under whichever reference is
nearer there; one decision for the run cannot be steered that way. Every position is then
judged against the followed reference:

- following the float copy: the float limit (a correct float engine is there within float
  rounding);
- following the native arithmetic (another build of the backend, an engine that rounds as
  ggml does): a limit per position, the float limit plus :data:`NOISE_FACTOR` times the
  reference's own rounding noise at that position, ``KL(native || dequantized)``. Two engines
  that both round, each in its own way, can differ by about the sum of their roundings; where
  the rounding moves the distribution little, the limit is the float one.

The continuation is generated once, by the model as given, and both references evaluate those
ids: the positions are then the same whatever ``--reference`` says (a run with ``native`` and one
with ``auto`` line up), they are the tokens the model as given produces, and the generation is
paid once. The two evaluations then run side by side when the machine has the cores and the
memory for both (:func:`evaluate`).

Float models have one reference, the model itself.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.defaults import (
    ReferenceMode,
)
from bitnet_crossval.crossval.metrics import PositionMetrics, Thresholds, compare_logits, kl_divergence, kl_reason
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.jsonsafe import finite_or_none
from bitnet_crossval.util.npy_rows import release_rows, rows_per_block
from bitnet_crossval.util.side_by_side import side_by_side as run_side_by_side

if TYPE_CHECKING:
    from bitnet_crossval.reference.dequantize import FloatCopy

ReferenceName = Literal["native", "dequantized"]

NOISE_FACTOR = 4.0
"""How many times the native reference's own rounding noise at a position a candidate that
follows the native arithmetic may differ by there (on top of the float limit); the measurements
behind it are in docs/explanation/verdict.md."""

NATIVE_MARGIN = 2.0
"""How many times nearer the model as given than its float copy a candidate must be, by mean KL,
to be judged as following the native arithmetic."""

F32Rows = npt.NDArray[np.float32]


def references_to_run(mode: ReferenceMode, *, quantized: bool) -> tuple[ReferenceName, ...]:
    """The references a run evaluates: the model as given always (it generates the continuation, and
    evaluates every position in the same call), and its float copy unless the model is float or
    ``native`` is asked for."""
    if not quantized or mode == "native":
        return ("native",)
    return ("native", "dequantized")


def kl_per_position(reference: F32Rows, candidate: F32Rows) -> npt.NDArray[np.float64]:
    """KL(P_reference || P_candidate) at every position, as the table's rows compute it, row by
    row (a row of a large vocabulary is megabytes in float64); NaN where either row is not finite.

    Memory-mapped logits are read a block of rows at a time and each block's pages are handed
    back after it, as :func:`compare_logits` does: a pass over 4,096 positions of a 262k
    vocabulary would otherwise keep 4 GB of each file's pages in the process."""
    n = reference.shape[0]
    out = np.empty(n, dtype=np.float64)
    block = rows_per_block(reference.shape[1] if reference.ndim > 1 else 1)
    for start in range(0, n, block):
        stop = min(n, start + block)
        for i in range(start, stop):
            r = np.asarray(reference[i], dtype=np.float64)
            c = np.asarray(candidate[i], dtype=np.float64)
            out[i] = kl_divergence(r, c) if np.isfinite(r).all() and np.isfinite(c).all() else math.nan
        release_rows(reference, start, stop)
        release_rows(candidate, start, stop)
    return out


@dataclass(frozen=True, kw_only=True)
class Distance:
    """How far the candidate is from one reference over the whole run."""

    mean_kl: float
    max_kl: float
    worst_position: int | None

    @classmethod
    def of(cls, kl: npt.NDArray[np.float64]) -> Distance:
        finite = np.isfinite(kl)
        if not finite.any():
            return cls(mean_kl=math.nan, max_kl=math.nan, worst_position=None)
        worst = int(np.argmax(np.where(finite, kl, -np.inf)))
        return cls(mean_kl=float(np.mean(kl[finite])), max_kl=float(kl[worst]), worst_position=worst)

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_kl": finite_or_none(self.mean_kl),
            "max_kl": finite_or_none(self.max_kl),
            "worst_position": self.worst_position,
        }


def decide(distances: dict[ReferenceName, Distance]) -> ReferenceName:
    """The reference the candidate follows over the whole run: the model as given when it is
    clearly the nearer by mean KL (:data:`NATIVE_MARGIN` times), else the float copy. A candidate
    about as far from both (a bug much larger than the rounding) or nowhere near either is
    judged at the stricter limit, and traced against the float copy at the float tolerance."""
    native, dequantized = distances["native"].mean_kl, distances["dequantized"].mean_kl
    if not math.isfinite(native):
        return "dequantized"
    if not math.isfinite(dequantized) or native * NATIVE_MARGIN < dequantized:
        return "native"
    return "dequantized"


def native_limits(noise: npt.NDArray[np.float64], float_limit: float) -> list[float]:
    """The KL limit at each position for a candidate that follows the native arithmetic."""
    return [float_limit + NOISE_FACTOR * (float(n) if math.isfinite(n) else 0.0) for n in noise]


def rejudge(rows: Sequence[PositionMetrics], limits: Sequence[float]) -> list[PositionMetrics]:
    """The rows judged at a limit of their own each; every other reason a row fails stays."""
    judged = []
    for row, limit in zip(rows, limits, strict=True):
        others = tuple(reason for reason in row.reasons if not reason.startswith("KL "))
        own = kl_reason(row.kl, limit) if math.isfinite(row.kl) or not row.reasons else None
        reasons = (own, *others) if own else others
        judged.append(replace(row, passed=not reasons, reasons=reasons))
    return judged


@dataclass(frozen=True, kw_only=True)
class ReferenceChoice:
    """What the run decided about its references (the report's ``reference.choice``)."""

    mode: ReferenceMode
    """As asked (``--reference``)."""
    references: tuple[ReferenceName, ...]
    """The references evaluated."""
    followed: ReferenceName
    why: str
    float_limit: float
    """The limit against the float copy, and the base of the per-position limits."""
    distances: dict[ReferenceName, Distance]
    """The candidate's distance to each evaluated reference (empty before the candidate ran)."""
    kl_by_reference: dict[ReferenceName, list[float]]
    """KL(reference || candidate) per position, for each evaluated reference."""
    noise: list[float] | None = None
    """KL(native || dequantized) per position, the native reference's own rounding noise."""
    limits: list[float] | None = None
    """The KL limit of each position, when it varies (following the native arithmetic)."""
    float_copy: FloatCopy | None = None

    @property
    def per_position(self) -> bool:
        return self.limits is not None

    def limit_words(self) -> str:
        if self.limits is None:
            return ""
        return f"{self.float_limit:g} + {NOISE_FACTOR:g} x KL(native || dequantized) at each position"

    def sentence(self) -> str:
        """One line for the table: which reference, why, and the distance to each."""
        names = {"native": "the model as given", "dequantized": "its float copy"}
        parts = [
            f"{name} {self.distances[name].mean_kl:.3g} (max {self.distances[name].max_kl:.3g})"
            for name in self.references
            if name in self.distances
        ]
        copy = f" ({self.float_copy.float_type})" if self.float_copy is not None else ""
        distance = f"; mean KL to {', to '.join(parts)}" if len(parts) > 1 and self.mode != "auto" else ""
        what = names[self.followed] + (copy if self.followed == "dequantized" else "")
        return f"reference: {self.followed} ({what}), {self.why}{distance}"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "references": list(self.references),
            "followed": self.followed,
            "why": self.why,
            "float_limit": self.float_limit,
            "noise_factor": NOISE_FACTOR if self.limits is not None else None,
            "distances": {name: distance.to_json() for name, distance in self.distances.items()},
            "kl_by_reference": {name: [finite_or_none(v) for v in kl] for name, kl in self.kl_by_reference.items()},
            "noise": [finite_or_none(v) for v in self.noise] if self.noise is not None else None,
            "kl_max_per_position": self.limits,
            "float_copy": self.float_copy.to_json() if self.float_copy is not None else None,
        }


@dataclass(frozen=True, kw_only=True)
class Evaluated:
    """The references' logits on the run's token ids."""

    tokens: list[int]
    logits: dict[ReferenceName, F32Rows]
    models: dict[ReferenceName, Path]
    """What the backend evaluated for each (the model as given, its float copy)."""
    settings: dict[str, Any]
    """The facts of the model as given's run (settings, generated tokens)."""
    float_copy: FloatCopy | None
    no_copy: str | None = None
    """Why ``auto`` runs without the float copy: the sentence of the error that refused it."""
    side_by_side: bool = False
    """Whether the float copy was evaluated beside the model as given (at the same time)."""


Generate = Callable[[Path, list[int], int], list[int]]
"""(model, prompt, tokens to generate) -> the prompt and its greedy continuation."""

EvaluateLogits = Callable[[Path, list[int], threading.Event | None], tuple[F32Rows, dict[str, Any]]]
"""(model, token ids, an event that calls the evaluation off or None) -> the logits of every
position and the run's facts."""


def evaluate(
    references: tuple[ReferenceName, ...],
    *,
    model: Path,
    prompt: list[int],
    max_tokens: int,
    generate: Generate,
    run_logits: EvaluateLogits,
    make_copy: Callable[[], FloatCopy],
    phase: Callable[[str], Any],
    copy_optional: bool = False,
    side_by_side: Callable[[FloatCopy], bool] = lambda copy: False,
    beside_generation: Callable[[threading.Event], None] | None = None,
) -> Evaluated:
    """Run each reference on the same ids: the model as given generates the continuation, then
    it and the float copy evaluate every position with the same backend and settings.

    The two evaluations are independent; when ``side_by_side(copy)`` (asked once, before
    either starts) says the machine has the cores and the memory for both at once, the float
    copy's runs beside the model's (each in a process of its own, one core each by default), and
    the pair takes as long as the longer. When the float copy's fails, the model's runs to its
    end first (as one after the other); when the model's fails, the float copy's is stopped.
    Either way the logits are the same: each process computes exactly what it would alone.
    ``beside_generation`` is work that needs no token ids (the candidate's preparation), done
    while the continuation is generated and finished before the evaluations start.
    ``copy_optional`` (``auto``): a copy that cannot be made (a split model, a type no
    dequantiser knows, too little disk) leaves the model as given alone, and says why."""
    models: dict[ReferenceName, Path] = {"native": model}

    def continuation() -> list[int]:
        with phase("reference"):
            return generate(model, prompt, max_tokens)

    if max_tokens <= 0:
        tokens = list(prompt)
    elif beside_generation is not None:
        tokens, _ = run_side_by_side(continuation, beside_generation)
    else:
        tokens = continuation()
    copy: FloatCopy | None = None
    no_copy: str | None = None
    if "dequantized" in references:
        with phase("float_copy"):
            try:
                copy = make_copy()
            except BadInput as exc:
                if not copy_optional:
                    raise
                no_copy = exc.message

    def native() -> tuple[F32Rows, dict[str, Any]]:
        with phase("reference"):
            return run_logits(model, tokens, None)

    if copy is None:
        logits, settings = native()
        return Evaluated(
            tokens=tokens,
            logits={"native": logits},
            models=models,
            settings=settings,
            float_copy=None,
            no_copy=no_copy,
        )
    copy_path = copy.path

    def dequantized(stop: threading.Event | None) -> tuple[F32Rows, dict[str, Any]]:
        with phase("reference_dequantized"):
            return run_logits(copy_path, tokens, stop)

    together = side_by_side(copy)
    if together:
        (native_logits, settings), (copy_logits, _) = run_side_by_side(native, dequantized)
    else:
        native_logits, settings = native()
        copy_logits, _ = dequantized(None)
    models["dequantized"] = copy_path
    return Evaluated(
        tokens=tokens,
        logits={"native": native_logits, "dequantized": copy_logits},
        models=models,
        settings=settings,
        float_copy=copy,
        side_by_side=together,
    )


def choose(
    mode: ReferenceMode,
    evaluated: Evaluated,
    candidate: F32Rows,
    *,
    float_limit: float,
) -> ReferenceChoice:
    """Which reference the candidate follows (from its distance to each over the whole run, with
    ``auto``), and the limit of every position."""
    names = tuple(evaluated.logits)
    kl = {name: kl_per_position(evaluated.logits[name], candidate) for name in names}
    distances = {name: Distance.of(values) for name, values in kl.items()}
    noise = None
    if len(names) == 1:
        followed: ReferenceName = names[0]
        if evaluated.no_copy is not None:
            why = f"the float copy could not be made ({evaluated.no_copy}), so the model as given judges alone"
        elif mode == "native":
            why = "as asked"
        else:
            why = "the model has no quantised weights, so it is its own float reference"
    else:
        noise = kl_per_position(evaluated.logits["native"], evaluated.logits["dequantized"])
        if mode == "auto":
            followed = decide(distances)
            other: ReferenceName = "dequantized" if followed == "native" else "native"
            verb = "is" if followed == "native" else "is not"
            why = (
                f"the candidate {verb} at least {NATIVE_MARGIN:g} times nearer the model as given than its float "
                f"copy over the whole run (mean KL {distances[followed].mean_kl:.3g} to {followed}, "
                f"{distances[other].mean_kl:.3g} to {other})"
            )
        else:
            followed = "dequantized"
            why = "as asked"
    limits = native_limits(noise, float_limit) if noise is not None and followed == "native" else None
    return ReferenceChoice(
        mode=mode,
        references=names,
        followed=followed,
        why=why,
        float_limit=float_limit,
        distances=distances,
        kl_by_reference={name: [float(v) for v in values] for name, values in kl.items()},
        noise=[float(v) for v in noise] if noise is not None else None,
        limits=limits,
        float_copy=evaluated.float_copy,
    )


def thresholds_for(choice: ReferenceChoice, base: Thresholds) -> Thresholds:
    """The run's thresholds once the followed reference is known (the per-position limits, when
    they vary, are :attr:`ReferenceChoice.limits`)."""
    return base if choice.followed == "native" and choice.limits is None else replace(base, kl_max=choice.float_limit)


def judge(
    mode: ReferenceMode,
    evaluated: Evaluated,
    candidate: F32Rows,
    *,
    base: Thresholds,
    float_limit: float,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReferenceChoice, Thresholds, list[PositionMetrics]]:
    """Which reference the candidate follows, and every position judged against it at its limit
    (``base``: the thresholds of the model as given, which ``native`` on a quantised model keeps)."""
    choice = choose(mode, evaluated, candidate, float_limit=float_limit)
    thresholds = thresholds_for(choice, base)
    followed = evaluated.logits[choice.followed]
    if choice.limits is None:
        return (
            choice,
            thresholds,
            compare_logits(followed, candidate, evaluated.tokens, thresholds=thresholds, progress=progress),
        )
    unbounded = replace(thresholds, kl_max=sys.float_info.max)  # the KL is judged per position below
    loose = compare_logits(followed, candidate, evaluated.tokens, thresholds=unbounded, progress=progress)
    return choice, thresholds, rejudge(loose, choice.limits)
