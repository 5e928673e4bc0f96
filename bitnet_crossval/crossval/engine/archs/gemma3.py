"""``gemma3`` (src/models/gemma3.cpp of the pinned llama.cpp).

Embeddings scaled by sqrtf(n_embd) in float; per layer: RMSNorm, per-head RMSNorm of Q and K,
RoPE NEOX with the layer's own base (sliding-window layers use ``rope.freq_base_swa``, global
layers ``rope.freq_base`` and the rope scaling), Q scaled by the attention scale before
attention (kq_scale 1), a sliding-window causal mask on SWA layers, post-attention norm,
GELU(tanh)-gated FFN, post-FFN norm; final norm, logits, optional final softcap (``Run.output``
applies it with the output matrix). Norm weights in a GGUF already include Gemma's +1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.archs.base import TensorShapes, decoder_tensors, no_facts
from bitnet_crossval.crossval.engine.archs.synthetic_model import (
    Draw,
    LayerWeights,
    MetadataWriter,
    SyntheticModel,
    SyntheticSpec,
    Weight,
    spec_as,
)
from bitnet_crossval.crossval.engine.faults import FaultName, FaultSpec, LocatedFault, at
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.graph import (
    ATTN_SCALE_FAULT,
    FINAL_SOFTCAP_FAULT,
    GQA_MAPPING_FAULT,
    MASK_AHEAD_FAULT,
    MASK_NO_SELF_FAULT,
    NORM_EPS_FAULT,
    ROPE_BASE_FAULT,
    ROPE_TYPE_FAULT,
    SLIDING_WINDOW_FAULT,
    SWAPPED_GATE_UP_FAULT,
    Qkv,
    Run,
)
from bitnet_crossval.crossval.engine.hparams import HParams, f32_inv_sqrt, swa_pattern
from bitnet_crossval.crossval.engine.ops import RopeType
from bitnet_crossval.crossval.engine.trace import TraceSite

F32Array = npt.NDArray[np.float32]

NAME = "gemma3"
GGUF_NAMES = ("gemma3",)
ROPE_TYPE: RopeType = "neox"

MISSING_QK_NORM_FAULT = FaultSpec(
    name=FaultName("missing_qk_norm"),
    description="gemma3's per-head RMSNorm of Q and K is skipped",
)


def _first_sliding_layer(hp: HParams) -> TraceSite:
    """A window fault shows in the attention output of the first sliding-window layer."""
    return TraceSite("kqv_out", next(il for il in range(hp.n_layer) if hp.is_swa(il)))


# Q is computed (and roped) before K and V; ggml evaluates the gate matmul before the up matmul.
FAULTS = (
    LocatedFault(ROPE_TYPE_FAULT, at("Qcur")),
    LocatedFault(ROPE_BASE_FAULT, at("Qcur")),
    LocatedFault(NORM_EPS_FAULT, at("attn_norm")),
    LocatedFault(SWAPPED_GATE_UP_FAULT, at("ffn_gate")),
    LocatedFault(GQA_MAPPING_FAULT, at("kqv_out")),
    LocatedFault(MASK_AHEAD_FAULT, at("kqv_out")),
    LocatedFault(MASK_NO_SELF_FAULT, at("kqv_out")),
    LocatedFault(ATTN_SCALE_FAULT, at("kqv_out")),
    LocatedFault(MISSING_QK_NORM_FAULT, at("Qcur_normed")),
    LocatedFault(SLIDING_WINDOW_FAULT, _first_sliding_layer),
    LocatedFault(FINAL_SOFTCAP_FAULT, at("result_output", -1)),
)

describe = no_facts

# llama_model_gemma3::load_arch_hparams: every 6th layer global unless the file says otherwise.
_SWA_PERIOD = 6
# Gemma 3 27B (its 62 layers identify it) scales Q by n_embd/n_head (gemma_pytorch config.py).
_LAYERS_27B = 62


def read_hparams(model: GGUFModelFile, hp: HParams) -> HParams:
    """Sliding window, its pattern and rope base, the final softcap, the attention scale."""
    key = f"{hp.architecture}."
    n_swa = model.get_int(key + "attention.sliding_window", default=0)
    swa_layers, rope_base_swa = hp.swa_layers, hp.rope_base_swa
    if n_swa > 0:
        swa_layers = swa_pattern(model, key + "attention.sliding_window_pattern", hp.n_layer, default=_SWA_PERIOD)
        rope_base_swa = model.get_float(key + "rope.freq_base_swa", default=10000.0)
    return replace(
        hp,
        n_swa=n_swa,
        swa_layers=swa_layers,
        rope_base_swa=rope_base_swa,
        final_logit_softcap=model.get_float(key + "final_logit_softcapping", default=0.0),
        attention_scale=f32_inv_sqrt(hp.n_embd // hp.n_head if hp.n_layer == _LAYERS_27B else hp.head_dim),
    )


def tensor_shapes(hp: HParams, has: Callable[[str], bool]) -> TensorShapes:
    def own(p: str) -> TensorShapes:
        return {
            p + "attn_q_norm.weight": (hp.head_dim,),
            p + "attn_k_norm.weight": (hp.head_dim,),
            p + "post_attention_norm.weight": (hp.n_embd,),
            p + "post_ffw_norm.weight": (hp.n_embd,),
        }

    return decoder_tensors(hp, has, fused_qkv=True, reads_output=True, layer=own)


def forward(run: Run) -> F32Array:
    hp = run.hp
    iswa = hp.n_swa > 0
    x = run.embed()
    x = np.multiply(x, np.sqrt(np.float32(hp.n_embd)), dtype=np.float32)
    run.rec("inp_scaled", -1, x)
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        cur = run.norm(x, p + "attn_norm.weight", il)
        run.rec("attn_norm", il, cur)

        qkv = run.qkv(cur, il)
        q = qkv.q if run.faulty(MISSING_QK_NORM_FAULT.name) else run.norm(qkv.q, p + "attn_q_norm.weight", il)
        run.rec("Qcur_normed", il, q)
        q = run.rope(q, il)
        run.rec("Qcur", il, q)
        if not iswa:  # a plain KV-cache graph evaluates V before K
            run.rec("Vcur", il, qkv.v)
        k = qkv.k if run.faulty(MISSING_QK_NORM_FAULT.name) else run.norm(qkv.k, p + "attn_k_norm.weight", il)
        run.rec("Kcur_normed", il, k)
        k = run.rope(k, il)
        run.rec("Kcur", il, k)
        if iswa:  # the iSWA graph evaluates Q, K, then V
            run.rec("Vcur", il, qkv.v)

        q = np.multiply(q, np.float32(hp.attention_scale), dtype=np.float32)
        kqv = run.attend(Qkv(q=q, k=k, v=qkv.v), il, kq_scale=1.0)
        run.rec("kqv_out", il, kqv)
        cur = run.lora_mm(kqv, p + "attn_output", scale=True)

        cur = run.norm(cur, p + "post_attention_norm.weight", il)
        run.rec("attn_post_norm", il, cur)
        sa_out = np.add(cur, x, dtype=np.float32)
        run.rec("sa_out", il, sa_out)

        cur = run.norm(sa_out, p + "ffn_norm.weight", il)
        run.rec("ffn_norm", il, cur)
        cur = run.ffn(cur, il, activation="gelu", scales=False, biases=False, down=True)
        run.rec("ffn_out", il, cur)
        cur = run.norm(cur, p + "post_ffw_norm.weight", -1)  # llama.cpp passes -1 here
        run.rec("ffn_post_norm", il, cur)

        x = np.add(cur, sa_out, dtype=np.float32)
        run.rec("l_out", il, x)

    cur = run.norm(x, "output_norm.weight", -1)
    run.rec("result_norm", -1, cur)
    logits = run.output(cur)  # the final softcap too (graph.project_output)
    run.rec("result_output", -1, logits)
    return logits


# --- the synthetic model ---


@dataclass(frozen=True, kw_only=True)
class Gemma3Spec(SyntheticSpec):
    sliding_window: int = 0
    swa_pattern: int | tuple[bool, ...] | None = None  # None: no key (llama.cpp's default 6)
    rope_base_swa: float | None = None  # None: no key (llama.cpp's default 10000)
    final_logit_softcap: float | None = None


def _check(spec: SyntheticSpec) -> list[str]:
    if spec.n_layer == _LAYERS_27B:
        return [f"{_LAYERS_27B} layers would select Gemma 3 27B's attention scale"]
    return []


# Post-norms well above 1: the embedding is scaled by sqrt(n_embd), the layers must keep up.
_POST_NORM = 1.5


def _layer(draw: Draw, spec: SyntheticSpec, il: int) -> list[Weight]:
    d, hd = spec.n_embd, spec.head_dim
    layer = LayerWeights(draw, spec, il)
    layer.norm("attn_norm", d)
    layer.qkv()
    layer.norm("attn_q_norm", hd)
    layer.norm("attn_k_norm", hd)
    layer.attn_output()
    layer.norm("post_attention_norm", d, centre=_POST_NORM, spread=0.15)
    layer.norm("ffn_norm", d)
    layer.ffn_gate_up()
    layer.ffn_down()
    layer.norm("post_ffw_norm", d, centre=_POST_NORM, spread=0.15)
    return layer.weights


def _metadata(writer: MetadataWriter, spec: SyntheticSpec, prefix: str) -> None:
    own = spec_as(Gemma3Spec, spec)
    writer.add_uint32(prefix + "attention.key_length", own.head_dim)
    writer.add_uint32(prefix + "attention.value_length", own.head_dim)
    if own.sliding_window > 0:
        writer.add_uint32(prefix + "attention.sliding_window", own.sliding_window)
    if isinstance(own.swa_pattern, tuple):
        writer.add_array(prefix + "attention.sliding_window_pattern", list(own.swa_pattern))
    elif own.swa_pattern is not None:
        writer.add_uint32(prefix + "attention.sliding_window_pattern", own.swa_pattern)
    if own.rope_base_swa is not None:
        writer.add_float32(prefix + "rope.freq_base_swa", own.rope_base_swa)
    if own.final_logit_softcap is not None:
        writer.add_float32(prefix + "final_logit_softcapping", own.final_logit_softcap)


SYNTHETIC = SyntheticModel(
    # Head size 128 != n_embd / n_head, window 6, layers 0, 1, 3 sliding and 2 global.
    spec=Gemma3Spec(
        n_layer=4,
        head_dim=128,
        rms_eps=1e-6,
        rope_base=1_000_000.0,
        sliding_window=6,
        swa_pattern=3,
    ),
    layer=_layer,
    metadata=_metadata,
    check=_check,
    embedding_std=0.03,
    output_norm=5.0,
)
