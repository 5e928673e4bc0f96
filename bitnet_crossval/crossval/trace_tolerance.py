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

Band = Literal["first layer", "deeper"]
BANDS: tuple[Band, ...] = ("first layer", "deeper")
"""Rounding differences grow through the layers (on Gemma 3 270M, F32, from about 1e-6 in layer 0
to about 1e-3 in layer 15), while a bug that changes every layer alike (an epsilon, a RoPE base)
shows first in layer 0, where its change is small on a real model. So the first layer has its
own, tighter row: a tensor of layer 0, or outside the layers before them (``embd``)."""

# Relative error per position a correct engine may reach, by precision, depth band and kind; the
# kinds not named take the ANY_KIND entry. Measured worst correct errors (the NumPy engine against
# llama.cpp; benchmarks/measure_trace_tolerances.py, 4 prompts, 18-63 tokens):
# - F32, first layer: at most 1.2e-6 (Gemma 3 270M's float copy, kqv_out-0), except the GELU and
#   what follows it in layer 0, which llama.cpp computes through an fp16 table: ffn_geglu 3.9e-4,
#   ffn_out 2.4e-4, ffn_post_norm 2.7e-4, l_out 1.6e-4 (all on Gemma).
# - F32, deeper: at most 1.5e-3 (Gemma, ffn_post_norm-5; the synthetic models stay under 5.5e-4).
# - F16 (synthetic llama and gemma3; llama.cpp rounds the activations to fp16 before an F16
#   matmul), first layer: at most 8.1e-4 (l_out-0), the FFN activations up to 9.9e-4; deeper: at
#   most 1.7e-3.
# The smallest fault measured at its own site: norm_eps at attn_norm-0 of Gemma's float copy, 4.7e-3
# (its activations are large, so an epsilon of 1e-2 hardly moves the norm): the first layer's
# default must stay under it, and does (1e-3, 840x the worst correct error it covers).
_GELU_CHAIN_F32 = {"ffn_geglu": 5e-3, "ffn_out": 5e-3, "ffn_post_norm": 5e-3, "l_out": 2e-3}
_FFN_ACTIVATIONS_F16 = {"ffn_geglu": 2e-2, "ffn_swiglu": 2e-2, "ffn_out": 2e-2, "ffn_post_norm": 2e-2}
TOLERANCES: Mapping[TracePrecision, Mapping[Band, Mapping[str, float]]] = MappingProxyType(
    {
        "F32": MappingProxyType(
            {
                "first layer": MappingProxyType({ANY_KIND: 1e-3, **_GELU_CHAIN_F32}),
                "deeper": MappingProxyType({ANY_KIND: 2e-2}),
            }
        ),
        "F16": MappingProxyType(
            {
                "first layer": MappingProxyType({ANY_KIND: 1e-2, **_FFN_ACTIVATIONS_F16}),
                "deeper": MappingProxyType({ANY_KIND: 5e-2}),
            }
        ),
        # Not measured to a 10x margin: against a quantised model itself, llama.cpp's 8-bit
        # activations put a correct float engine up to about 0.2 away (Gemma 3 270M Q4_K_M).
        "quantized": MappingProxyType(
            {
                "first layer": MappingProxyType({ANY_KIND: 0.25}),
                "deeper": MappingProxyType({ANY_KIND: 0.25}),
            }
        ),
    }
)

# Tensors without a layer that come after the layers; every other one without a layer comes
# before them (embd, inp_scaled). gemma3's post-FFN norm is named ``norm`` without a layer
# (llama.cpp passes -1 there), and the trace keeps its last node, in the last layer.
_AFTER_THE_LAYERS = frozenset({"norm", "result_norm", "result_output"})


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


def tensor_band(name: str) -> Band:
    kind, layer = split_key(name)
    if layer == 0 or (layer < 0 and kind not in _AFTER_THE_LAYERS):
        return "first layer"
    return "deeper"


def judged_by_kl(name: str) -> bool:
    return tensor_kind(name) == LOGITS


def tolerance_for(name: str, precision: TracePrecision) -> float:
    """The largest relative error per position the tensor ``name`` may have at ``precision``."""
    row = TOLERANCES[precision][tensor_band(name)]
    return row.get(tensor_kind(name), row[ANY_KIND])
