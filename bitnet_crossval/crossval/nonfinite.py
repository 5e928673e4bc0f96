"""NaN and infinity: the outcome of a comparison that has no real numbers to judge.

A verdict is only given on finite numbers. When the logits of either side hold NaN or
infinity, the run's outcome is ``non-finite`` instead of parity or divergence: which side,
which positions, what kind of value, and where it can be found, the first tensor of that
side's trace that holds one (``--trace``) and, for the reference, the model's weight tensors
that hold one. On the reference's side the model is the cause (its weights or hyperparameters
are not finite, or its numbers overflow on this prompt): bad input, exit 6. On the candidate's
side the candidate wrote output that cannot be compared: exit 11.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BadInput, CandidateFailed
from bitnet_crossval.util.npy_rows import row_blocks, rows_not_finite, rows_per_block

Side = Literal["reference", "candidate"]
Loader = Callable[[], npt.NDArray[np.float32]]

MAX_WEIGHTS_NAMED = 8


@dataclass(frozen=True, kw_only=True)
class Counts:
    nan: int
    pos_inf: int
    neg_inf: int

    @property
    def total(self) -> int:
        return self.nan + self.pos_inf + self.neg_inf

    def words(self) -> str:
        """``NaN``, ``+inf and -inf``, ... : what kinds of value were found."""
        kinds = [word for word, n in (("NaN", self.nan), ("+inf", self.pos_inf), ("-inf", self.neg_inf)) if n]
        return " and ".join(kinds) if kinds else "none"

    def to_json(self) -> dict[str, int]:
        return {"nan": self.nan, "pos_inf": self.pos_inf, "neg_inf": self.neg_inf}


def count(array: npt.NDArray[Any]) -> Counts:
    """How many NaN, +inf and -inf ``array`` holds; a matrix of logits (a memory map of
    thousands of positions) is read a block of rows at a time."""
    values = np.asarray(array)
    if values.ndim != 2:
        return _count(values)
    nan = pos_inf = neg_inf = 0
    for _start, rows in row_blocks(values, rows_per_block(values.shape[1])):
        part = _count(rows)
        nan, pos_inf, neg_inf = nan + part.nan, pos_inf + part.pos_inf, neg_inf + part.neg_inf
    return Counts(nan=nan, pos_inf=pos_inf, neg_inf=neg_inf)


def _count(values: npt.NDArray[Any]) -> Counts:
    nan = int(np.count_nonzero(np.isnan(values)))
    pos_inf = int(np.count_nonzero(np.isposinf(values)))
    neg_inf = int(np.count_nonzero(np.isneginf(values)))
    return Counts(nan=nan, pos_inf=pos_inf, neg_inf=neg_inf)


def bad_rows(array: npt.NDArray[Any]) -> list[int]:
    """Indices of the rows (first axis) that hold a value that is not finite (a matrix of logits
    a block of rows at a time: no mask of the whole is made)."""
    values = np.asarray(array)
    if values.ndim == 0:
        return [] if np.isfinite(values) else [0]
    if values.ndim == 2:
        return rows_not_finite(values)
    flat = values.reshape(values.shape[0], -1)
    return [int(i) for i in np.flatnonzero(~np.isfinite(flat).all(axis=1))]


@dataclass(frozen=True, kw_only=True)
class NonFiniteTensor:
    """The first traced tensor of one side that holds a value that is not finite."""

    name: str
    layer: int | None
    op: str
    positions: list[int]
    counts: Counts
    after: str | None = None
    """The tensor traced just before it (all finite), if any."""

    def words(self) -> str:
        where = f"layer {self.layer}, " if self.layer is not None else ""
        op = f" ({self.op})" if self.op else ""
        first = f", first at position {self.positions[0]}" if self.positions else ""
        before = f"; everything traced before it is finite (last: {self.after})" if self.after else ""
        return f"{where}{self.name}{op} holds {self.counts.words()}{first}{before}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "op": self.op,
            "positions": self.positions,
            "counts": self.counts.to_json(),
            "after": self.after,
        }


@dataclass(frozen=True, kw_only=True)
class TracedTensor:
    """One tensor of a side's trace, in execution order, for :func:`first_in_trace`."""

    name: str
    layer: int | None
    op: str
    load: Loader


def first_in_trace(tensors: Sequence[TracedTensor], positions: Sequence[int]) -> NonFiniteTensor | None:
    """The first tensor, in the order given, holding NaN or infinity; ``positions`` maps the rows
    of a tensor that holds only the traced positions back to token positions."""
    previous: str | None = None
    for tensor in tensors:
        array = np.asarray(tensor.load())
        rows = bad_rows(array)
        if rows:
            by_position = array.ndim > 0 and array.shape[0] == len(positions)
            return NonFiniteTensor(
                name=tensor.name,
                layer=tensor.layer,
                op=tensor.op,
                positions=[int(positions[r]) if by_position else r for r in rows],
                counts=count(array),
                after=previous,
            )
        previous = tensor.name
    return None


@dataclass(frozen=True, kw_only=True)
class NonFinite:
    """Where one side's logits stop being real numbers."""

    side: Side
    label: str
    """How the side is named in a sentence: "the reference", "the candidate numpy"."""
    positions: list[int]
    n_positions: int
    counts: Counts
    traced: bool = False
    """Whether that side was traced to find the tensor below."""
    first_tensor: NonFiniteTensor | None = None
    weights: list[tuple[str, int]] = field(default_factory=list)
    """The model's weight tensors holding NaN or infinity, with how many values (reference side)."""
    weights_checked: bool = False

    @property
    def exit_code(self) -> int:
        return BadInput.exit_code if self.side == "reference" else CandidateFailed.exit_code

    def sentence(self) -> str:
        first = self.positions[0]
        at = (
            f"position {first}"
            if len(self.positions) == 1
            else f"{len(self.positions)} of {self.n_positions} positions"
        )
        if len(self.positions) > 1:
            at += f", the first at position {first}"
        head = f"the logits of {self.label} hold {self.counts.words()} at {at}"
        if self.side == "reference":
            head += ", so they cannot judge a candidate"
        else:
            head += ", which cannot be compared"
        parts = [head]
        if self.weights:
            named = ", ".join(f"{name} ({n} values)" for name, n in self.weights[:MAX_WEIGHTS_NAMED])
            more = f" and {len(self.weights) - MAX_WEIGHTS_NAMED} more" if len(self.weights) > MAX_WEIGHTS_NAMED else ""
            parts.append(f"the model's weights hold NaN or infinity: {named}{more}")
        elif self.side == "reference" and self.weights_checked:
            parts.append("the model's weights are all finite")
        if self.first_tensor is not None:
            parts.append(f"the first traced tensor that holds them: {self.first_tensor.words()}")
        elif self.traced:
            parts.append("no traced tensor holds them")
        return "; ".join(parts)

    def next_step(self) -> str:
        if self.side == "reference":
            if self.weights:
                return (
                    f"check the model's weights ({self.weights[0][0]} holds NaN or infinity): re-convert or "
                    "re-download the model"
                )
            trace = (
                ""
                if self.traced
                else "; rerun with --trace to see the first tensor of llama.cpp's graph that holds them"
            )
            return (
                "check the model's weights and hyperparameters: with finite weights the reference overflows on "
                f"this prompt{trace}"
            )
        if self.first_tensor is not None:
            return (
                f"look at how the candidate computes {self.first_tensor.name}: it is the first of its tensors "
                "with NaN or infinity"
            )
        if self.traced:
            return "the candidate's trace is finite throughout: look at its output head (result_output)"
        return "fix the candidate; rerun with --trace to see the first of its tensors that holds NaN or infinity"

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "positions": self.positions,
            "n_positions": self.n_positions,
            "counts": self.counts.to_json(),
            "traced": self.traced,
            "first_tensor": self.first_tensor.to_json() if self.first_tensor else None,
            "weights": [{"name": name, "values": n} for name, n in self.weights],
            "weights_checked": self.weights_checked,
            "exit_code": self.exit_code,
        }


def find(logits: npt.NDArray[Any], *, side: Side, label: str) -> NonFinite | None:
    """The side's non-finite finding, or None when every logit is finite."""
    rows = bad_rows(logits)
    if not rows:
        return None
    return NonFinite(side=side, label=label, positions=rows, n_positions=int(logits.shape[0]), counts=count(logits))


def non_finite_weights(model: Path) -> tuple[list[tuple[str, int]], bool]:
    """The model's tensors that hold NaN or infinity (with how many), in file order, and whether
    they could be checked at all (a file or tensor type the NumPy reader cannot decode is
    skipped: the check only adds to the sentence)."""
    from bitnet_crossval.crossval.engine import GGUFModelFile

    try:
        gguf = GGUFModelFile(model)
    except BadInput:
        return [], False
    found: list[tuple[str, int]] = []
    checked = False
    for name in gguf.tensors:
        try:
            n = gguf.count_non_finite(name)
        except BadInput:
            continue
        checked = True
        if n:
            found.append((name, n))
    return found, checked
