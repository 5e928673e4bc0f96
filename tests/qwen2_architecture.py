"""``qwen2`` (src/models/qwen2.cpp of the pinned llama.cpp): an architecture the engine does not ship,
declared the way a third party would, in this one module, and registered by the tests that use it
(``bitnet_crossval.crossval.engine.register``).

The graph is llama's with RoPE NEOX (llama_model_rope_type), Q/K/V biases (optional for
llama.cpp, present in every Qwen2 checkpoint), no bias or scale on the output projection and
the FFN (``load_arch_tensors`` creates none), and no ``attn_out`` callback; logits come from
``output`` or, without it, from the tied embedding. ``output.bias`` (llama.cpp's optional
lm-head bias, absent from Qwen2 checkpoints) is not read, so such a file would disagree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.archs.base import TensorShapes, decoder_tensors, no_facts
from bitnet_crossval.crossval.engine.archs.synthetic_model import (
    Draw,
    LayerWeights,
    SyntheticModel,
    SyntheticSpec,
    Weight,
)
from bitnet_crossval.crossval.engine.faults import FaultName, FaultSpec, LocatedFault, at
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.graph import (
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

NAME = "qwen2"
GGUF_NAMES = ("qwen2",)
ROPE_TYPE: RopeType = "neox"

MISSING_QKV_BIAS_FAULT = FaultSpec(
    name=FaultName("missing_qkv_bias"),
    description="qwen2's Q/K/V biases are not added",
)

# Q (with its bias) is computed and roped before K and V; the gate matmul runs before the up matmul.
FAULTS = (
    LocatedFault(ROPE_TYPE_FAULT, at("Qcur")),
    LocatedFault(ROPE_BASE_FAULT, at("Qcur")),
    LocatedFault(NORM_EPS_FAULT, at("attn_norm")),
    LocatedFault(SWAPPED_GATE_UP_FAULT, at("ffn_gate")),
    LocatedFault(GQA_MAPPING_FAULT, at("kqv_out")),
    LocatedFault(MASK_AHEAD_FAULT, at("kqv_out")),
    LocatedFault(MASK_NO_SELF_FAULT, at("kqv_out")),
    LocatedFault(MISSING_QKV_BIAS_FAULT, at("Qcur")),
)

describe = no_facts


def read_hparams(model: GGUFModelFile, hp: HParams) -> HParams:
    require_full_rotation(model, hp)  # GGML_ASSERT(n_embd_head == n_rot) in the graph
    return hp


def tensor_shapes(hp: HParams, has: Callable[[str], bool]) -> TensorShapes:
    def biases(p: str) -> TensorShapes:
        expected = {
            p + "attn_q.bias": (hp.n_head * hp.head_dim,),
            p + "attn_k.bias": (hp.n_head_kv * hp.head_dim,),
            p + "attn_v.bias": (hp.n_head_kv * hp.head_dim_v,),
        }
        return {name: ne for name, ne in expected.items() if has(name)}

    return decoder_tensors(hp, has, fused_qkv=True, reads_output=True, layer=biases)


def _qkv_without_biases(run: Run, x: F32Array, il: int) -> Qkv:
    hp, p, n = run.hp, f"blk.{il}.", run.n_tokens
    q, k, v = (run.lora_mm(x, p + f"attn_{part}", scale=True) for part in "qkv")
    return Qkv(
        q=np.ascontiguousarray(q).reshape(n, hp.n_head, hp.head_dim),
        k=np.ascontiguousarray(k).reshape(n, hp.n_head_kv, hp.head_dim),
        v=np.ascontiguousarray(v).reshape(n, hp.n_head_kv, hp.head_dim_v),
    )


def forward(run: Run) -> F32Array:
    hp = run.hp
    x = run.embed()
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        cur = run.norm(x, p + "attn_norm.weight", il)
        run.rec("attn_norm", il, cur)

        faulty = run.faulty(MISSING_QKV_BIAS_FAULT.name)
        qkv = _qkv_without_biases(run, cur, il) if faulty else run.qkv(cur, il)
        q = run.rope(qkv.q, il)
        k = run.rope(qkv.k, il)
        # ggml order of a KV-cache graph: the Q chain, then V, then K (build_attn expands k last).
        run.rec("Qcur", il, q)
        run.rec("Vcur", il, qkv.v)
        run.rec("Kcur", il, k)

        kqv = run.attend(Qkv(q=q, k=k, v=qkv.v), il, kq_scale=hp.attention_scale)
        run.rec("kqv_out", il, kqv)
        cur = run.lora_mm(kqv, p + "attn_output", scale=False)

        ffn_inp = np.add(cur, x, dtype=np.float32)
        run.rec("ffn_inp", il, ffn_inp)
        cur = run.norm(ffn_inp, p + "ffn_norm.weight", il)
        run.rec("ffn_norm", il, cur)
        cur = run.ffn(cur, il, activation="silu", scales=False, biases=False, down=True)
        run.rec("ffn_out", il, cur)

        x = np.add(cur, ffn_inp, dtype=np.float32)
        run.rec("l_out", il, x)

    cur = run.norm(x, "output_norm.weight", -1)
    run.rec("result_norm", -1, cur)
    logits = run.output(cur)
    run.rec("result_output", -1, logits)
    return logits


# --- the synthetic model ---


def _check(spec: SyntheticSpec) -> list[str]:
    if spec.n_head * spec.head_dim != spec.n_embd:
        return ["qwen2 needs n_head*head_dim == n_embd"]
    return []


def _layer(draw: Draw, spec: SyntheticSpec, il: int) -> list[Weight]:
    layer = LayerWeights(draw, spec, il)
    layer.norm("attn_norm", spec.n_embd)
    layer.qkv()
    # Biases of the size Qwen2's are: they move the attention scores visibly.
    layer.bias("attn_q", layer.q_dim, 0.5)
    layer.bias("attn_k", layer.kv_dim, 0.5)
    layer.bias("attn_v", layer.kv_dim, 0.1)
    layer.attn_output()
    layer.norm("ffn_norm", spec.n_embd)
    layer.ffn_gate_up()
    layer.ffn_down()
    return layer.weights


def _output(draw: Draw, spec: SyntheticSpec, n_vocab: int) -> list[Weight]:
    return [("output.weight", draw.gaussian(n_vocab, spec.n_embd, 2.5 / math.sqrt(spec.n_embd)), None)]


SYNTHETIC = SyntheticModel(
    spec=SyntheticSpec(n_layer=3, rope_base=1_000_000.0, rms_eps=1e-6),
    layer=_layer,
    output=_output,
    check=_check,
    embedding_std=0.02,
    output_norm=1.0,
)
