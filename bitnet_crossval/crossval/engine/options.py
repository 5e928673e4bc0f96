"""Options of the engine: legitimate overrides of how it computes, and the one deliberate fault.

The faults themselves (names, what each does, where each first shows) are declared in
:mod:`.faults` and by the modules that implement them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bitnet_crossval.crossval.engine.faults import Fault

BitnetActivation = Literal["silu", "relu2"]
KvCache = Literal["f32", "f16"]
OutputWeights = Literal["cache", "stream"]


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
