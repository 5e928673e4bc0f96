"""Where a divergence starts: the reference's and the candidate's intermediates, tensor by tensor.

When a position diverges, both sides are evaluated again with their intermediates recorded
(the shim's ``trace`` with llama.cpp's graph callback; the candidate's own trace), for the
positions up to the first failing one. The tensors are compared in the reference's execution
order with a numeric tolerance per tensor kind and precision (:mod:`.trace_tolerance`: relative
error per position, never bit equality; the logits by the verdict's own KL and top-1); the first
tensor that departs is the answer, with the last one that still agreed before it, and the first
position where it departs as well as its worst.

Names follow llama.cpp's ``cb(cur, name, il)`` rendered ``name-il`` (``attn_norm-0``,
``Qcur-3``, ``result_output``); layouts put the token axis first (``[n_tokens, n_embd]``, Q/K/V
``[n_tokens, n_head, head_dim]``). A candidate may hand in other layouts that the mapping below
knows per architecture: heads merged (``[n_tokens, n_head * head_dim]``), heads first
(``[n_head, n_tokens, head_dim]``), transposed 2-D tensors, and for ``llama`` the Hugging Face
order of the rotary halves in Q and K (llama's GGUF conversion permutes those rows). A tensor
present on one side only is reported, never skipped silently.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_FLOAT, DEFAULT_KL_MAX_QUANTIZED
from bitnet_crossval.crossval.engine.trace import split_key
from bitnet_crossval.crossval.metrics import Thresholds, compare_row
from bitnet_crossval.crossval.trace_tolerance import BANDS, TOLERANCES, TracePrecision, judged_by_kl, tolerance_for
from bitnet_crossval.errors import BadInput, CandidateFailed, UnreadableArray
from bitnet_crossval.util.jsonsafe import finite_or_none
from bitnet_crossval.util.npy import read_npy

F32Array = npt.NDArray[np.float32]
Loader = Callable[[], F32Array]

_ROTARY_NAMES = frozenset({"Qcur", "Kcur"})


@dataclass(frozen=True, kw_only=True)
class RefTensor:
    name: str
    layer: int | None
    op: str
    shape: tuple[int, ...]
    load: Loader


@dataclass(frozen=True, kw_only=True)
class TensorComparison:
    name: str
    layer: int | None
    op: str
    shape: list[int]
    layout: str
    """How the candidate's array was mapped onto the reference's layout ("as is", "heads merged", ...)."""
    max_rel_error: float
    min_cosine: float
    max_abs_diff: float
    worst_position: int
    """Where the judged measure (relative error, or KL for the logits) is largest."""
    agrees: bool
    tolerance: float = math.inf
    """The largest relative error per position this tensor may have (``trace_tolerance``)."""
    first_position: int | None = None
    """The first traced position where the tensor departs; None when it agrees."""
    max_kl: float | None = None
    """The logits only: the largest KL(P_ref || P_cand) over the traced positions."""
    non_finite: str | None = None
    """Which side holds NaN or infinity in this tensor ("candidate", "reference", "both"): it then
    departs, and its error and cosine are not numbers."""

    @property
    def judged_by(self) -> str:
        return "KL" if self.max_kl is not None else "relative error"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "op": self.op,
            "shape": self.shape,
            "layout": self.layout,
            "max_rel_error": finite_or_none(self.max_rel_error),
            "min_cosine": finite_or_none(self.min_cosine),
            "max_abs_diff": finite_or_none(self.max_abs_diff),
            "worst_position": self.worst_position,
            "first_position": self.first_position,
            "judged_by": self.judged_by,
            "tolerance": finite_or_none(self.tolerance),
            "max_kl": finite_or_none(self.max_kl) if self.max_kl is not None else None,
            "agrees": self.agrees,
            "non_finite": self.non_finite,
        }


@dataclass(frozen=True, kw_only=True)
class TraceComparison:
    positions: list[int]
    precision: TracePrecision
    kl_max: float
    """The verdict's KL limit, by which the logits (``result_output``) are judged."""
    compared: list[TensorComparison]
    """In the reference's execution order, up to and including the first that departs."""
    first_departure: TensorComparison | None
    last_agreement: TensorComparison | None
    missing_in_candidate: list[str] = field(default_factory=list)
    """Names the reference computed and the candidate did not provide (before the departure)."""
    only_in_candidate: list[str] = field(default_factory=list)
    candidate_traced: bool = True
    unmatched_filter: str | None = None
    """The trace filters (``--trace-names 'x'``) when they selected none of the reference's tensors."""
    filtered: bool = False
    """Whether --trace-layers or --trace-names narrowed what was traced."""
    rel_tol: float | None = None
    """One relative-error tolerance for every kind, when the caller overrode the table."""

    @property
    def tolerances(self) -> dict[str, dict[str, float]]:
        """The relative-error tolerances used, by depth band and kind (``*``: every kind not named)."""
        if self.rel_tol is not None:
            return {band: {"*": self.rel_tol} for band in BANDS}
        return {band: dict(row) for band, row in TOLERANCES[self.precision].items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "positions": self.positions,
            "precision": self.precision,
            "tolerances": self.tolerances,
            "kl_max": self.kl_max,
            "filtered": self.filtered,
            "candidate_traced": self.candidate_traced,
            "unmatched_filter": self.unmatched_filter,
            "first_departure": self.first_departure.to_json() if self.first_departure else None,
            "last_agreement": self.last_agreement.to_json() if self.last_agreement else None,
            "missing_in_candidate": self.missing_in_candidate,
            "only_in_candidate": self.only_in_candidate,
            "compared": [c.to_json() for c in self.compared],
        }

    def sentence(self) -> str:
        if self.unmatched_filter is not None:
            return (
                f"the trace filter {self.unmatched_filter} matched no tensor of the reference, so nothing was compared"
            )
        if not self.candidate_traced:
            return "the candidate wrote no trace, so the divergence cannot be located inside the model"
        if self.first_departure is None:
            if self.filtered:
                return (
                    "every traced tensor agrees within its tolerance; the divergence starts outside what was traced "
                    "(widen --trace-layers / --trace-names)"
                )
            if self.missing_in_candidate:
                return (
                    "every tensor the candidate provided agrees within its tolerance; the divergence is in what "
                    "it did not provide"
                )
            return "every traced tensor agrees within its tolerance"
        d = self.first_departure
        where = f"layer {d.layer}, " if d.layer is not None else ""
        after = f"; everything before it agrees (last: {self.last_agreement.name})" if self.last_agreement else ""
        if d.non_finite is not None:
            side = {"both": "on both sides", "reference": "on the reference's side"}.get(
                d.non_finite, "on the candidate's side"
            )
            return (
                f"{where}{d.name} ({d.op}) first departs: it holds NaN or infinity {side} at position "
                f"{d.worst_position}{after}"
            )
        return f"{where}{d.name} ({d.op}) first departs: {departure_figures(d)}{after}"


def departure_figures(d: TensorComparison) -> str:
    """``from position 2 (relative error 0.03 > 0.002); worst at position 5: ...``."""
    first = d.first_position if d.first_position is not None else d.worst_position
    if d.max_kl is not None:
        measure = f"KL {d.max_kl:.3g}"
        limit = "the verdict's limit"
    else:
        measure = f"relative error {d.max_rel_error:.3g}, cosine {d.min_cosine:.4f}"
        limit = f"the tolerance {d.tolerance:g}"
    if first == d.worst_position:
        return f"{measure} at position {first} (over {limit}; the first position where it departs)"
    return f"from position {first}; worst at position {d.worst_position}: {measure} (over {limit})"


def describe_filters(layers: tuple[int, int] | None, names: str | None) -> str:
    """The filters as the user typed them: ``--trace-names 'x' --trace-layers 2-3``."""
    parts = []
    if names is not None:
        parts.append(f"--trace-names {names!r}")
    if layers is not None:
        parts.append(f"--trace-layers {layers[0]}" + (f"-{layers[1]}" if layers[1] != layers[0] else ""))
    return " ".join(parts)


def parse_layers(text: str) -> tuple[int, int] | None:
    """``--trace-layers``: ``A`` or ``A-B`` (inclusive), or empty for every layer."""
    value = text.strip()
    if not value:
        return None
    match = re.fullmatch(r"([0-9]{1,4})(?:-([0-9]{1,4}))?", value)
    if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
        raise BadInput(
            f"--trace-layers {text!r} is not a layer or a range A-B", next_step="pass e.g. --trace-layers 0-3"
        )
    first = int(match.group(1))
    return first, int(match.group(2)) if match.group(2) is not None else first


def parse_names(text: str) -> str | None:
    """``--trace-names``: a regular expression the whole tensor name must match, within the subset
    Python and the shim's C++ read alike (:mod:`~bitnet_crossval.crossval.name_pattern`)."""
    from bitnet_crossval.crossval.name_pattern import check_name_pattern

    value = text.strip()
    if not value:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise BadInput(
            f"--trace-names {text!r} is not a regular expression ({exc})", next_step="pass e.g. --trace-names 'attn_.*'"
        ) from None
    check_name_pattern(value)
    return value


def compare_traces(
    reference: Sequence[RefTensor],
    candidate: Mapping[str, Loader] | None,
    *,
    architecture: str,
    positions: list[int],
    precision: TracePrecision,
    thresholds: Thresholds | None = None,
    filtered: bool = False,
    rel_tol: float | None = None,
) -> TraceComparison:
    """Compare in the reference's order; stop at the first tensor that departs.

    Each tensor is held to its kind's tolerance at ``precision``, the logits to ``thresholds``
    (the verdict's; by default its default limit for the precision). ``rel_tol`` replaces the
    table by one tolerance for every kind.
    """
    if thresholds is None:
        thresholds = Thresholds(kl_max=DEFAULT_KL_MAX_QUANTIZED if precision == "quantized" else DEFAULT_KL_MAX_FLOAT)
    common: dict[str, Any] = {
        "positions": positions, "precision": precision, "kl_max": thresholds.kl_max, "filtered": filtered,
        "rel_tol": rel_tol,
    }  # fmt: skip
    if not candidate:  # None, or a trace directory left empty: nothing to compare is no agreement
        return TraceComparison(**common, compared=[], first_departure=None, last_agreement=None, candidate_traced=False)
    reference_names = {t.name for t in reference}
    compared: list[TensorComparison] = []
    missing: list[str] = []
    first: TensorComparison | None = None
    last: TensorComparison | None = None
    for ref in reference:
        loader = candidate.get(ref.name)
        if loader is None:
            missing.append(ref.name)
            continue
        tolerance = rel_tol if rel_tol is not None else tolerance_for(ref.name, precision)
        result = compare_tensor(
            ref,
            loader(),
            architecture=architecture,
            positions=positions,
            rel_tol=tolerance,
            thresholds=thresholds if judged_by_kl(ref.name) else None,
        )
        compared.append(result)
        if not result.agrees:
            first = result
            break
        last = result
    only = sorted(name for name in candidate if name not in reference_names)
    return TraceComparison(
        **common,
        compared=compared,
        first_departure=first,
        last_agreement=last,
        missing_in_candidate=missing,
        only_in_candidate=only,
    )


def compare_tensor(
    ref: RefTensor,
    array: F32Array,
    *,
    architecture: str,
    positions: list[int],
    rel_tol: float,
    thresholds: Thresholds | None = None,
) -> TensorComparison:
    """One tensor against the reference's: by relative error per position within ``rel_tol``, or,
    with ``thresholds``, position by position as the verdict judges logits."""
    expected = np.asarray(ref.load(), dtype=np.float64)
    best: TensorComparison | None = None
    for layout, view in candidate_views(ref.name, architecture, np.asarray(array), expected.shape, positions):
        result = _metrics(ref, expected, view, layout=layout, positions=positions, rel_tol=rel_tol)
        if thresholds is not None and result.non_finite is None:
            result = _judge_logits(result, expected, view, positions=positions, thresholds=thresholds)
        if result.agrees:
            return result
        # None agrees: report the closest mapping, so a real error is not hidden behind a layout's.
        if best is None or _closeness(result) < _closeness(best):
            best = result
    if best is not None:
        return best
    return TensorComparison(
        name=ref.name,
        layer=ref.layer,
        op=ref.op,
        shape=list(expected.shape),
        layout=f"shape {list(np.shape(array))} does not map onto {list(expected.shape)}",
        max_rel_error=math.inf,
        min_cosine=0.0,
        max_abs_diff=math.inf,
        worst_position=positions[0] if positions else 0,
        first_position=positions[0] if positions else 0,
        agrees=False,
        tolerance=rel_tol,
    )


def candidate_views(
    name: str, architecture: str, array: npt.NDArray[Any], expected: tuple[int, ...], positions: list[int]
) -> list[tuple[str, npt.NDArray[np.float64]]]:
    """The candidate's array in the reference's layout, each way this architecture allows.

    A candidate may hold every position (``[n_tokens, ...]``) while the reference kept only
    ``positions``; those rows are selected first.
    """
    views: list[tuple[str, npt.NDArray[np.float64]]] = []
    base_name, _layer = split_key(name)
    for layout, shaped in _shapes(np.asarray(array, dtype=np.float64), expected, positions):
        views.append((layout, shaped))
        if architecture == "llama" and base_name in _ROTARY_NAMES and shaped.ndim == 3:
            views.append((f"{layout}, rotary halves in Hugging Face order", _hf_to_gguf_rotary(shaped)))
    return views


def _shapes(
    array: npt.NDArray[np.float64], expected: tuple[int, ...], positions: list[int]
) -> list[tuple[str, npt.NDArray[np.float64]]]:
    n = expected[0] if expected else 0
    out: list[tuple[str, npt.NDArray[np.float64]]] = []

    def select(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64] | None:
        if a.shape[0] == n:
            return a
        if positions and a.shape[0] > max(positions):
            return a[positions]
        return None

    candidates: list[tuple[str, npt.NDArray[np.float64]]] = [("as is", array)]
    if array.ndim == 2:
        candidates.append(("transposed", array.T))
    if array.ndim == 3:
        candidates.append(("heads first", array.transpose(1, 0, 2)))
    for layout, a in candidates:
        rows = select(a) if a.ndim >= 1 and a.shape else None
        if rows is None:
            continue
        if rows.shape == expected:
            out.append((layout, rows))
        elif rows.ndim == 2 and len(expected) == 3 and rows.shape[1] == expected[1] * expected[2]:
            out.append((f"{layout}, heads merged", rows.reshape(expected)))
        elif rows.ndim == 3 and len(expected) == 2 and rows.shape[1] * rows.shape[2] == expected[1]:
            out.append((f"{layout}, heads split", rows.reshape(expected)))
    return out


def _closeness(result: TensorComparison) -> float:
    return result.max_rel_error if math.isfinite(result.max_rel_error) else math.inf


def _hf_to_gguf_rotary(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Hugging Face keeps each head's rotary pairs as halves (i, i + d/2); llama's GGUF stores them
    adjacent (2i, 2i + 1) after convert_hf_to_gguf permutes the Q/K rows."""
    half = x.shape[-1] // 2
    return np.stack((x[..., :half], x[..., half:]), axis=-1).reshape(x.shape)


def _metrics(
    ref: RefTensor,
    expected: npt.NDArray[np.float64],
    actual: npt.NDArray[np.float64],
    *,
    layout: str,
    positions: list[int],
    rel_tol: float,
) -> TensorComparison:
    n = expected.shape[0]
    e = expected.reshape(n, -1)
    a = actual.reshape(n, -1)
    unreal_rows: npt.NDArray[np.bool_] = np.asarray(~(np.isfinite(a).all(axis=1) & np.isfinite(e).all(axis=1)))
    if unreal_rows.any():
        return replace(
            _not_finite(ref, expected, e, a, unreal_rows, layout=layout, positions=positions), tolerance=rel_tol
        )
    diff = a - e
    ref_norm = np.linalg.norm(e, axis=1)
    diff_norm = np.linalg.norm(diff, axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        rel = np.where(ref_norm > 0, diff_norm / np.maximum(ref_norm, 1e-30), np.where(diff_norm > 0, np.inf, 0.0))
        denom = ref_norm * np.linalg.norm(a, axis=1)
        cosine = np.where(
            denom > 0, np.sum(e * a, axis=1) / np.maximum(denom, 1e-300), np.where(diff_norm > 0, 0.0, 1.0)
        )
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    worst = int(np.argmax(np.nan_to_num(rel, nan=np.inf))) if n else 0
    max_rel = float(np.max(rel)) if n else 0.0
    over = np.flatnonzero(~(rel <= rel_tol))
    return TensorComparison(
        name=ref.name,
        layer=ref.layer,
        op=ref.op,
        shape=list(expected.shape),
        layout=layout,
        max_rel_error=max_rel,
        min_cosine=float(np.min(cosine)) if n else 1.0,
        max_abs_diff=max_abs,
        worst_position=_position(positions, worst),
        first_position=_position(positions, int(over[0])) if over.size else None,
        agrees=bool(math.isfinite(max_rel) and max_rel <= rel_tol),
        tolerance=rel_tol,
    )


def _position(positions: list[int], row: int) -> int:
    return positions[row] if row < len(positions) else row


def _judge_logits(
    result: TensorComparison,
    expected: npt.NDArray[np.float64],
    actual: npt.NDArray[np.float64],
    *,
    positions: list[int],
    thresholds: Thresholds,
) -> TensorComparison:
    """The logits as the verdict judges them: KL and top-1 per position against ``thresholds``."""
    n = expected.shape[0]
    e = expected.reshape(n, -1)
    a = actual.reshape(n, -1)
    rows = [
        compare_row(e[i], a[i], position=_position(positions, i), token=0, next_token=None, thresholds=thresholds)
        for i in range(n)
    ]
    kls = [row.kl for row in rows]
    failing = [row.position for row in rows if not row.passed]
    worst = int(np.argmax(kls)) if kls else 0
    return replace(
        result,
        max_kl=max(kls) if kls else 0.0,
        worst_position=_position(positions, worst),
        first_position=failing[0] if failing else None,
        agrees=not failing,
    )


def _not_finite(
    ref: RefTensor,
    expected: npt.NDArray[np.float64],
    e: npt.NDArray[np.float64],
    a: npt.NDArray[np.float64],
    unreal_rows: npt.NDArray[np.bool_],
    *,
    layout: str,
    positions: list[int],
) -> TensorComparison:
    """A tensor with NaN or infinity on a side departs; no error or cosine of it is a number (an
    all-NaN tensor must never show a cosine of 1)."""
    candidate_bad, reference_bad = not np.isfinite(a).all(), not np.isfinite(e).all()
    side = "both" if candidate_bad and reference_bad else ("candidate" if candidate_bad else "reference")
    first = int(np.flatnonzero(unreal_rows)[0])
    return TensorComparison(
        name=ref.name,
        layer=ref.layer,
        op=ref.op,
        shape=list(expected.shape),
        layout=layout,
        max_rel_error=math.nan,
        min_cosine=math.nan,
        max_abs_diff=math.nan,
        worst_position=_position(positions, first),
        first_position=_position(positions, first),
        agrees=False,
        non_finite=side,
    )


def read_trace_dir(directory: Path, *, label: str | None = None) -> dict[str, Loader]:
    """A candidate's trace directory: one ``<name>.npy`` per tensor (``Qcur-0.npy``).

    Each file is read only when it is compared, and only if it is a regular file with a
    consistent ``.npy`` header (:func:`~bitnet_crossval.util.npy.read_npy`): a FIFO or a device
    named like a tensor never blocks the run. One that cannot be read is the candidate's failure
    (``label`` names the candidate in the sentence).
    """
    who = "the candidate" if label is None else f"the candidate {label}"
    try:
        with os.scandir(directory) as entries:
            names = sorted(entry.name for entry in entries if entry.name.endswith(".npy"))
    except OSError as exc:
        raise CandidateFailed(
            f"the trace directory of {who} cannot be listed ({exc.strerror or exc})",
            next_step="write the intermediates as files inside the {trace} directory",
        ) from None
    loaders: dict[str, Loader] = {}
    for name in names:

        def load(path: Path = directory / name) -> F32Array:
            try:
                array = read_npy(path)
                return np.asarray(array, dtype=np.float32)
            except UnreadableArray as exc:
                reason = exc.reason
            except (TypeError, ValueError):
                reason = "its values are not numbers"
            raise CandidateFailed(
                f"{who} wrote the trace file {path.name}, which is not a readable .npy file ({reason})",
                next_step="write each intermediate with numpy.save, as a regular file in the {trace} directory",
            )

        loaders[name[: -len(".npy")]] = load
    return loaders
