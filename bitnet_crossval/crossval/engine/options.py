"""Options of the engine: legitimate overrides, and the deliberate faults of the self-check.

The self-check (``invoke crossval-selfcheck``) runs the engine with one fault at a time and
proves the cross-validation catches it and locates it. So every fault is named, documented,
and knows the first traced tensor it changes (:func:`fault_site`): a checker that bisects a
trace against the reference must stop exactly there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from bitnet_crossval.crossval.engine.hparams import Family, HParams
from bitnet_crossval.crossval.engine.trace import TraceSite
from bitnet_crossval.errors import BadInput

BitnetActivation = Literal["silu", "relu2"]
KvCache = Literal["f32", "f16"]
OutputWeights = Literal["cache", "stream"]

FaultName = Literal[
    "rope_type",
    "rope_base",
    "norm_eps",
    "missing_sub_norm",
    "swapped_gate_up",
    "gqa_mapping",
    "mask_ahead",
    "mask_no_self",
    "ternary_scale",
    "missing_qk_norm",
    "sliding_window",
]
FAULT_NAMES: tuple[FaultName, ...] = get_args(FaultName)

ALL_FAMILIES: frozenset[Family] = frozenset({"llama", "gemma3", "bitnet"})


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    """What a fault does, where it applies, and the magnitude used when none is given."""

    name: FaultName
    description: str
    families: frozenset[Family]
    default_value: float | None
    value_meaning: str


FAULTS: dict[FaultName, FaultSpec] = {
    spec.name: spec
    for spec in (
        FaultSpec(
            name="rope_type",
            description="RoPE of the wrong variant: NEOX (halves) where the model needs NORM (pairs), and back",
            families=ALL_FAMILIES,
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="rope_base",
            description="RoPE base multiplied by a factor (every layer, sliding-window layers included)",
            families=ALL_FAMILIES,
            default_value=2.0,
            value_meaning="factor applied to the rope base",
        ),
        FaultSpec(
            name="norm_eps",
            description="every RMSNorm uses a wrong epsilon",
            families=ALL_FAMILIES,
            default_value=1e-2,
            value_meaning="the epsilon used instead of the model's",
        ),
        FaultSpec(
            name="missing_sub_norm",
            description="bitnet's attn_sub_norm is skipped (attention output goes to wo un-normalised)",
            families=frozenset({"bitnet"}),
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="swapped_gate_up",
            description="the FFN gate and up projections are swapped",
            families=ALL_FAMILIES,
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="gqa_mapping",
            description="query head h reads K/V head h % n_head_kv instead of h // (n_head / n_head_kv)",
            families=ALL_FAMILIES,
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="mask_ahead",
            description="causal mask off by one: each position also attends to the next one",
            families=ALL_FAMILIES,
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="mask_no_self",
            description="causal mask off by one: a position does not attend to itself "
            "(position 0 then sees nothing and gets a zero attention output)",
            families=ALL_FAMILIES,
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="ternary_scale",
            description="the per-tensor scale of bitnet's ternary projections is wrong by a factor",
            families=frozenset({"bitnet"}),
            default_value=0.5,
            value_meaning="factor applied to every ternary projection weight",
        ),
        FaultSpec(
            name="missing_qk_norm",
            description="gemma3's per-head RMSNorm of Q and K is skipped",
            families=frozenset({"gemma3"}),
            default_value=None,
            value_meaning="unused",
        ),
        FaultSpec(
            name="sliding_window",
            description="sliding-window layers use a wrong window",
            families=frozenset({"gemma3"}),
            default_value=None,
            value_meaning="the window used instead of the model's (default: twice the model's)",
        ),
    )
}


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One deliberate fault; ``value`` overrides its default magnitude (see :data:`FAULTS`)."""

    name: FaultName
    value: float | None = None

    def __post_init__(self) -> None:
        if self.name not in FAULTS:
            raise BadInput(
                f"unknown fault {self.name!r}",
                next_step=f"use one of: {', '.join(FAULT_NAMES)}",
            )

    @property
    def spec(self) -> FaultSpec:
        return FAULTS[self.name]

    @property
    def magnitude(self) -> float | None:
        return self.value if self.value is not None else self.spec.default_value


@dataclass(frozen=True, kw_only=True)
class EngineOptions:
    """How the engine computes.

    ``bitnet_activation``: the FFN activation of bitnet models. None follows the reference
    graph of the architecture: ``silu`` for ``bitnet`` (upstream llama.cpp, and bitnet.cpp's
    2024 fork), ``relu2`` for microsoft/BitNet's ``bitnet-b1.58``/``bitnet-25`` graph. Set it
    from the reference actually built (:func:`bitnet_activation_from_source`).
    ``kv_cache``: "f16" reproduces the rounding of an F16 KV cache (the 2024 fork allows no
    other without flash attention). ``emulate_activation_quant``: round activations the way
    ggml's CPU backend does before a dot product with quantised/F16/BF16 weights (Q8_0 or Q8_K
    blocks, fp16, bf16); off, the engine is a plain float reference.
    ``gelu_fp16_table``: GELU through ggml's fp16 table (what llama.cpp computes on CPU).
    ``output_weights``: "cache" keeps the float32 output matrix (the token embedding when tied)
    after its first use; "stream" dequantises it slab by slab in every forward pass instead,
    which saves its whole float32 copy (most of the memory of a small model with a large
    vocabulary) for a dequantisation per pass. Results agree up to float rounding (the matmul is
    split differently).
    ``fault``: a deliberate fault, for the self-check only.
    """

    bitnet_activation: BitnetActivation | None = None
    kv_cache: KvCache = "f32"
    emulate_activation_quant: bool = False
    gelu_fp16_table: bool = True
    output_weights: OutputWeights = "cache"
    fault: Fault | None = None


def check_fault_applies(fault: Fault, hp: HParams) -> None:
    """BadInput when ``fault`` cannot change this model's results (so a self-check cannot pass by accident)."""
    spec = fault.spec
    if hp.family not in spec.families:
        raise BadInput(
            f"the fault {fault.name!r} applies to {', '.join(sorted(spec.families))} models, not to {hp.architecture}",
            next_step="pick a fault listed for this architecture",
        )
    if fault.name == "gqa_mapping":
        heads = np.arange(hp.n_head)
        if np.array_equal(heads // hp.n_group, heads % hp.n_head_kv):
            raise BadInput(
                f"the fault 'gqa_mapping' changes nothing on a model with {hp.n_head} heads and "
                f"{hp.n_head_kv} K/V heads (both mappings agree)",
                next_step="use a model with grouped-query attention and more than one K/V head",
            )
    if fault.name == "sliding_window" and hp.n_swa <= 0:
        raise BadInput(
            f"the fault 'sliding_window' needs a model with sliding-window layers; {hp.architecture} here has none",
            next_step="use a gemma3 model with attention.sliding_window set",
        )


def fault_window(fault: Fault, hp: HParams) -> int:
    value = fault.magnitude
    return int(value) if value is not None else 2 * hp.n_swa


def fault_site(fault: Fault, hp: HParams) -> TraceSite:
    """The first tensor, in llama.cpp's execution order, whose value the fault changes.

    Only the tensor is named: some faults leave early positions alone (RoPE is the identity at
    position 0; a window fault shows only past the window), so compare whole sequences.
    """
    check_fault_applies(fault, hp)
    name = fault.name
    if name in {"rope_type", "rope_base", "ternary_scale"}:
        # Q is computed (and roped) before K and V in every graph here.
        return TraceSite("Qcur", 0)
    if name == "norm_eps":
        return TraceSite("attn_norm", 0)
    if name == "missing_sub_norm":
        return TraceSite("attn_sub_norm", 0)
    if name == "swapped_gate_up":
        # ggml evaluates the gate matmul before the up matmul (swiglu/geglu take the gate first).
        return TraceSite("ffn_gate", 0)
    if name == "missing_qk_norm":
        return TraceSite("Qcur_normed", 0)
    if name == "sliding_window":
        first_swa = next(il for il in range(hp.n_layer) if hp.is_swa(il))
        return TraceSite("kqv_out", first_swa)
    # gqa_mapping, mask_ahead, mask_no_self: the attention output of the first layer.
    return TraceSite("kqv_out", 0)
