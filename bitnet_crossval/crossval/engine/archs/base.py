"""What an architecture of the NumPy engine declares, in one module, and the parts most share.

An architecture is a module (or any object) that satisfies :class:`Architecture`: the
``general.architecture`` names it runs, its RoPE type, its own hyperparameters, the tensors it
requires and their shapes, its forward pass, its synthetic model and the deliberate faults that
apply to it. The engine, the synthetic models, the self-check and ``--model synthetic:ARCH``
find it in the registry (:data:`~bitnet_crossval.crossval.engine.archs.ALL_ARCHITECTURES`)
and never name an architecture themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.hparams import HParams
from bitnet_crossval.crossval.engine.ops import RopeType

if TYPE_CHECKING:
    from bitnet_crossval.crossval.engine.archs.synthetic_model import SyntheticModel
    from bitnet_crossval.crossval.engine.faults import LocatedFault
    from bitnet_crossval.crossval.engine.graph import Run
    from bitnet_crossval.crossval.engine.options import EngineOptions

F32Array = npt.NDArray[np.float32]
TensorShapes = dict[str, tuple[int, ...]]
"""Tensor name -> its ``ne`` (ggml order), in the order the tensors are checked."""


class Architecture(Protocol):
    """One architecture of the NumPy engine (as in PEP 544, a module satisfies it: ``self`` is ignored).

    Upper-case members are module constants, the rest functions.
    """

    @property
    def NAME(self) -> str:
        """The registry key: ``HParams.family``, ``--model synthetic:NAME``, the self-check's ``--arch``."""

    @property
    def GGUF_NAMES(self) -> tuple[str, ...]:
        """The ``general.architecture`` values it runs (the first is the one it writes)."""

    @property
    def ROPE_TYPE(self) -> RopeType:
        """llama_model_rope_type() of the pinned llama.cpp for these names."""

    @property
    def FAULTS(self) -> tuple[LocatedFault, ...]:
        """The deliberate faults that can change its results, each with the first tensor it changes."""

    @property
    def SYNTHETIC(self) -> SyntheticModel | None:
        """How to write a small synthetic model of it; None if it has none."""

    def read_hparams(self, model: GGUFModelFile, hp: HParams) -> HParams:
        """``hp`` (the keys every architecture has, read) completed with the architecture's own keys."""

    def tensor_shapes(self, hp: HParams, has: Callable[[str], bool]) -> TensorShapes:
        """Every tensor the graph requires, and any optional one it reads that ``has`` says is present,
        with its expected shape."""

    def forward(self, run: Run) -> F32Array:
        """The logits ``[n_tokens, n_vocab]``, recording intermediates under llama.cpp's names."""

    def describe(self, hp: HParams, options: EngineOptions) -> dict[str, object]:
        """Facts of its own for a report's provenance (may be empty)."""


MEMBERS = tuple(name for name in vars(Architecture) if not name.startswith("_"))
"""The names an architecture must define (checked when one is registered)."""


def decoder_tensors(
    hp: HParams,
    has: Callable[[str], bool],
    *,
    fused_qkv: bool,
    reads_output: bool,
    layer: Callable[[str], TensorShapes] | None = None,
) -> TensorShapes:
    """The tensors of a llama-like decoder (llama.cpp's ``create_tensor_qkv`` and friends).

    Token embedding, final norm, the ``output`` matrix when the file has one and
    ``reads_output``, and per layer: attention norm, output projection, FFN norm, gate, up and
    down, then Q/K/V (the fused ``attn_qkv`` when ``fused_qkv`` and the file has it), then
    ``layer(prefix)``: what the architecture adds to each layer.
    """
    q_dim, kv_dim, v_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim_v
    shapes: TensorShapes = {"token_embd.weight": (hp.n_embd, hp.n_vocab), "output_norm.weight": (hp.n_embd,)}
    if reads_output and has("output.weight"):
        shapes["output.weight"] = (hp.n_embd, hp.n_vocab)
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        shapes |= {
            p + "attn_norm.weight": (hp.n_embd,),
            p + "attn_output.weight": (hp.n_head * hp.head_dim_v, hp.n_embd),
            p + "ffn_norm.weight": (hp.n_embd,),
            p + "ffn_gate.weight": (hp.n_embd, hp.n_ff),
            p + "ffn_up.weight": (hp.n_embd, hp.n_ff),
            p + "ffn_down.weight": (hp.n_ff, hp.n_embd),
        }
        if fused_qkv and has(p + "attn_qkv.weight"):
            shapes[p + "attn_qkv.weight"] = (hp.n_embd, q_dim + kv_dim + v_dim)
        else:
            shapes |= {
                p + "attn_q.weight": (hp.n_embd, q_dim),
                p + "attn_k.weight": (hp.n_embd, kv_dim),
                p + "attn_v.weight": (hp.n_embd, v_dim),
            }
        if layer is not None:
            shapes |= layer(p)
    return shapes


def no_facts(hp: HParams, options: EngineOptions) -> dict[str, object]:
    """``describe`` of an architecture with nothing of its own to report."""
    return {}
