"""``llama`` (src/models/llama.cpp of the pinned llama.cpp).

RMSNorm, RoPE NORM applied to Q/K as stored (the converter's row permutation is baked into
the GGUF), grouped-query attention scaled by 1/sqrt(head_dim) (``llama`` never reads
attention.scale), SiLU-gated FFN, optional biases and ``rope_freqs``, output tied to the
token embedding when the file has no ``output`` tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.archs.base import TensorShapes, decoder_tensors, no_facts
from bitnet_crossval.crossval.engine.archs.synthetic_model import (
    Draw,
    LayerWeights,
    SyntheticModel,
    SyntheticSpec,
    Weight,
    spec_as,
)
from bitnet_crossval.crossval.engine.faults import LocatedFault, at
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.graph import (
    ATTN_SCALE_FAULT,
    GQA_MAPPING_FAULT,
    MASK_AHEAD_FAULT,
    MASK_NO_SELF_FAULT,
    NORM_EPS_FAULT,
    ROPE_BASE_FAULT,
    ROPE_TYPE_FAULT,
    SWAPPED_GATE_UP_FAULT,
    Qkv,
    Run,
)
from bitnet_crossval.crossval.engine.hparams import HParams, require_full_rotation
from bitnet_crossval.crossval.engine.ops import RopeType

F32Array = npt.NDArray[np.float32]

NAME = "llama"
GGUF_NAMES = ("llama",)
ROPE_TYPE: RopeType = "norm"

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
)

describe = no_facts


def read_hparams(model: GGUFModelFile, hp: HParams) -> HParams:
    require_full_rotation(model, hp)
    return hp


def tensor_shapes(hp: HParams, has: Callable[[str], bool]) -> TensorShapes:
    return decoder_tensors(hp, has, fused_qkv=True, reads_output=True)


def forward(run: Run) -> F32Array:
    hp = run.hp
    freq_factors = run.opt("rope_freqs.weight")
    x = run.embed()
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        cur = run.norm(x, p + "attn_norm.weight", il)
        run.rec("attn_norm", il, cur)

        qkv = run.qkv(cur, il)
        q = run.rope(qkv.q, il, freq_factors=freq_factors)
        k = run.rope(qkv.k, il, freq_factors=freq_factors)
        # ggml order of a KV-cache graph: the Q chain, then V, then K (build_attn expands k last).
        run.rec("Qcur", il, q)
        run.rec("Vcur", il, qkv.v)
        run.rec("Kcur", il, k)

        kqv = run.attend(Qkv(q=q, k=k, v=qkv.v), il, kq_scale=hp.attention_scale)
        run.rec("kqv_out", il, kqv)
        cur = run.lora_mm(kqv, p + "attn_output", scale=True)
        bias = run.opt(p + "attn_output.bias")
        if bias is not None:
            cur = np.add(cur, bias, dtype=np.float32)
        run.rec("attn_out", il, cur)

        ffn_inp = np.add(cur, x, dtype=np.float32)
        run.rec("ffn_inp", il, ffn_inp)
        cur = run.norm(ffn_inp, p + "ffn_norm.weight", il)
        run.rec("ffn_norm", il, cur)
        cur = run.ffn(cur, il, activation="silu", scales=True, biases=True, down=True)
        run.rec("ffn_out", il, cur)

        x = np.add(cur, ffn_inp, dtype=np.float32)
        run.rec("l_out", il, x)

    cur = run.norm(x, "output_norm.weight", -1)
    run.rec("result_norm", -1, cur)
    logits = run.output(cur)
    run.rec("result_output", -1, logits)
    return logits


# --- the synthetic model ---


@dataclass(frozen=True, kw_only=True)
class LlamaSpec(SyntheticSpec):
    attention_bias: bool = False
    ffn_bias: bool = False
    rope_freqs: bool = False
    separate_output: bool = True


def _check(spec: SyntheticSpec) -> list[str]:
    if spec.n_head * spec.head_dim != spec.n_embd:
        return ["llama needs n_head*head_dim == n_embd"]
    return []


def _layer(draw: Draw, spec: SyntheticSpec, il: int) -> list[Weight]:
    own = spec_as(LlamaSpec, spec)
    d, ff = own.n_embd, own.n_ff
    layer = LayerWeights(draw, own, il)
    layer.norm("attn_norm", d)
    layer.qkv()
    if own.attention_bias:
        layer.bias("attn_q", layer.q_dim, 0.1)
        layer.bias("attn_k", layer.kv_dim, 0.1)
        layer.bias("attn_v", layer.kv_dim, 0.1)
    layer.attn_output()
    if own.attention_bias:
        layer.bias("attn_output", d, 0.02)
    layer.norm("ffn_norm", d)
    layer.ffn_gate_up()
    layer.ffn_down()
    if own.ffn_bias:
        layer.bias("ffn_gate", ff, 0.1)
        layer.bias("ffn_up", ff, 0.1)
        layer.bias("ffn_down", d, 0.02)
    return layer.weights


def _output(draw: Draw, spec: SyntheticSpec, n_vocab: int) -> list[Weight]:
    own = spec_as(LlamaSpec, spec)
    out: list[Weight] = []
    if own.separate_output:
        out.append(("output.weight", draw.gaussian(n_vocab, own.n_embd, 2.5 / math.sqrt(own.n_embd)), None))
    if own.rope_freqs:
        # llama3-style factors: high-frequency dimensions untouched, low ones stretched.
        factors = np.linspace(1.0, 8.0, own.head_dim // 2).astype(np.float32)
        out.append(("rope_freqs.weight", factors, None))
    return out


SYNTHETIC = SyntheticModel(
    spec=LlamaSpec(n_layer=3),
    layer=_layer,
    output=_output,
    check=_check,
    embedding_std=0.02,
    output_norm=1.0,
)
