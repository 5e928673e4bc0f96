"""How far a traced tensor may be from the reference's and still agree: one table, per kind and precision.

A tensor's kind is its name without the layer (``attn_norm-3`` -> ``attn_norm``). Its precision
class comes from the model's weight types: ``F32`` (F32 and F64 only), ``F16`` (any F16 or BF16
weight, the rest float) and ``quantized`` (any other weight type).

Every kind but the logits is judged by its largest relative error per position
(||cand - ref|| / ||ref|| over the position's row). The logits (``result_output``) are judged as
the verdict judges them, by KL and top-1 per position (:func:`~bitnet_crossval.crossval.metrics.compare_row`):
a relative error over the whole vocabulary cannot see a change confined to its top few entries,
such as a wrong final soft-cap.

Where the numbers come from: ``benchmarks/measure_trace_tolerances.py`` traced llama.cpp (the
reference) and correct engines (the NumPy engine; llama.cpp itself as a candidate) on the
synthetic llama, bitnet and gemma3 models in F32 and F16 and on the F32 float copy of Gemma 3
270M (Q4_K_M dequantised by llama.cpp) over several prompts, and recorded the worst relative
error of each kind. Each float tolerance is at least 10x that worst correct error; the figures
and the margins are in docs/explanation/trace.md. The ``quantized`` row is not measured to that
margin: llama.cpp rounds activations to 8 bits before every quantised matmul, and a float engine
traced against the quantised model itself departs by up to about 0.2 while correct.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Literal

from bitnet_crossval.crossval.engine.trace import split_key

TracePrecision = Literal["F32", "F16", "quantized"]
TRACE_PRECISIONS: tuple[TracePrecision, ...] = ("F32", "F16", "quantized")

LOGITS = "result_output"
"""The kind judged by the verdict's KL rather than by a relative error."""

ANY_KIND = "*"
"""The row of a kind the table does not name (an architecture's own tensors)."""

_F32_TYPES = frozenset({"F32", "F64"})
_HALF_TYPES = frozenset({"F16", "BF16"})

# Relative error per position a correct engine may reach, by precision and kind. See the module
# docstring for the measurement; the kinds not named take the ANY_KIND row.
TOLERANCES: Mapping[TracePrecision, Mapping[str, float]] = MappingProxyType(
    {
        "F32": MappingProxyType(
            {
                ANY_KIND: 2e-3,
            }
        ),
        "F16": MappingProxyType(
            {
                ANY_KIND: 2e-2,
            }
        ),
        "quantized": MappingProxyType({ANY_KIND: 0.25}),
    }
)


def trace_precision(weight_types: Collection[str]) -> TracePrecision:
    """The precision class of a model with these tensor types (``quantized`` when unknown)."""
    types = set(weight_types)
    if types and types <= _F32_TYPES:
        return "F32"
    if types and types <= _F32_TYPES | _HALF_TYPES:
        return "F16"
    return "quantized"


def tensor_kind(name: str) -> str:
    """``attn_norm-3`` -> ``attn_norm``; ``result_output`` -> ``result_output``."""
    return split_key(name)[0]


def judged_by_kl(name: str) -> bool:
    return tensor_kind(name) == LOGITS


def tolerance_for(name: str, precision: TracePrecision) -> float:
    """The largest relative error per position the tensor ``name`` may have at ``precision``."""
    row = TOLERANCES[precision]
    return row.get(tensor_kind(name), row[ANY_KIND])
