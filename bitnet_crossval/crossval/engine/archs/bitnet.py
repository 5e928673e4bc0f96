"""``bitnet`` (src/models/bitnet.cpp of the pinned llama.cpp), which also runs microsoft/BitNet's
``bitnet-b1.58`` / ``bitnet-25`` GGUFs.

Per layer: RMSNorm, Q/K/V (each times its optional ``.scale``), RoPE NEOX, attention scaled by
1/sqrt(head_dim), ``attn_sub_norm``, wo, residual; RMSNorm, act(gate)·up, ``ffn_sub_norm``
(over n_ff), down, residual. Logits always come from ``token_embd``. The activation is a
parameter: upstream llama.cpp and bitnet.cpp's 2024 fork use SiLU for ``bitnet``, while
BitNet b1.58 as trained (and the fork's ``bitnet-b1.58`` graph) uses squared ReLU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.archs.base import TensorShapes, decoder_tensors
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
from bitnet_crossval.crossval.engine.hparams import HParams
from bitnet_crossval.crossval.engine.ops import RopeType
from bitnet_crossval.crossval.engine.options import BitnetActivation, EngineOptions

F32Array = npt.NDArray[np.float32]

NAME = "bitnet"
# microsoft/BitNet writes its own GGUFs as bitnet-b1.58, and knows bitnet-25 as an alias of that graph.
GGUF_NAMES = ("bitnet", "bitnet-b1.58", "bitnet-25")
ROPE_TYPE: RopeType = "neox"

# The BitLinear (ternary) projections of a layer.
_TERNARY = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def _is_ternary(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[2] in _TERNARY and parts[3] == "weight"


def _scale_ternary(name: str, weight: F32Array, factor: float | None) -> F32Array | None:
    if not _is_ternary(name):
        return None
    assert factor is not None
    scaled: F32Array = np.multiply(weight, np.float32(factor), dtype=np.float32)
    return scaled


MISSING_SUB_NORM_FAULT = FaultSpec(
    name=FaultName("missing_sub_norm"),
    description="bitnet's attn_sub_norm is skipped (attention output goes to wo un-normalised)",
)
TERNARY_SCALE_FAULT = FaultSpec(
    name=FaultName("ternary_scale"),
    description="the per-tensor scale of bitnet's ternary projections is wrong by a factor",
    default_value=0.5,
    value_meaning="factor applied to every ternary projection weight",
    change_weight=_scale_ternary,
)

# Q is computed (and roped) before K and V; ggml evaluates the gate matmul before the up matmul.
FAULTS = (
    LocatedFault(ROPE_TYPE_FAULT, at("Qcur")),
    LocatedFault(ROPE_BASE_FAULT, at("Qcur")),
    LocatedFault(NORM_EPS_FAULT, at("attn_norm")),
    LocatedFault(MISSING_SUB_NORM_FAULT, at("attn_sub_norm")),
    LocatedFault(SWAPPED_GATE_UP_FAULT, at("ffn_gate")),
    LocatedFault(GQA_MAPPING_FAULT, at("kqv_out")),
    LocatedFault(MASK_AHEAD_FAULT, at("kqv_out")),
    LocatedFault(MASK_NO_SELF_FAULT, at("kqv_out")),
    LocatedFault(ATTN_SCALE_FAULT, at("kqv_out")),
    LocatedFault(TERNARY_SCALE_FAULT, at("Qcur")),
)


def _activation(hp: HParams, options: EngineOptions) -> BitnetActivation:
    """The option when given, else what the reference graph of the file's architecture uses."""
    return options.bitnet_activation or ("silu" if hp.architecture == "bitnet" else "relu2")


def describe(hp: HParams, options: EngineOptions) -> dict[str, object]:
    return {"bitnet_activation": _activation(hp, options)}


def read_hparams(model: GGUFModelFile, hp: HParams) -> HParams:
    return hp


def tensor_shapes(hp: HParams, has: Callable[[str], bool]) -> TensorShapes:
    def own(p: str) -> TensorShapes:
        return {p + "attn_sub_norm.weight": (hp.n_embd,), p + "ffn_sub_norm.weight": (hp.n_ff,)}

    # Separate Q/K/V only, and the logits always come from token_embd (an output.weight is not read).
    return decoder_tensors(hp, has, fused_qkv=False, reads_output=False, layer=own)


def forward(run: Run) -> F32Array:
    hp = run.hp
    activation = _activation(hp, run.options)
    x = run.embed()
    for il in range(hp.n_layer):
        p = f"blk.{il}."
        cur = run.norm(x, p + "attn_norm.weight", il)
        run.rec("attn_norm", il, cur)

        qkv = run.qkv(cur, il)
        q = run.rope(qkv.q, il)
        k = run.rope(qkv.k, il)
        run.rec("Qcur", il, q)
        run.rec("Vcur", il, qkv.v)
        run.rec("Kcur", il, k)

        kqv = run.attend(Qkv(q=q, k=k, v=qkv.v), il, kq_scale=hp.attention_scale)
        run.rec("kqv_out", il, kqv)
        cur = kqv if run.faulty(MISSING_SUB_NORM_FAULT.name) else run.norm(kqv, p + "attn_sub_norm.weight", il)
        run.rec("attn_sub_norm", il, cur)
        cur = run.lora_mm(cur, p + "attn_output", scale=True)
        run.rec("attn_out", il, cur)

        ffn_inp = np.add(cur, x, dtype=np.float32)
        run.rec("ffn_inp", il, ffn_inp)
        cur = run.norm(ffn_inp, p + "ffn_norm.weight", il)
        run.rec("ffn_norm", il, cur)
        cur = run.ffn(
            cur,
            il,
            activation=activation,
            scales=True,
            biases=False,
            down=False,
            act_name="ffn_sub_out",
        )
        cur = run.norm(cur, p + "ffn_sub_norm.weight", il)
        run.rec("ffn_sub_norm", il, cur)
        cur = run.lora_mm(cur, p + "ffn_down", scale=True)
        run.rec("ffn_down", il, cur)

        x = np.add(cur, ffn_inp, dtype=np.float32)
        run.rec("l_out", il, x)

    cur = run.norm(x, "output_norm.weight", -1)
    run.rec("result_norm", -1, cur)
    logits = run.output(cur, tied_only=True)
    run.rec("result_output", -1, logits)
    return logits


# --- the synthetic model ---


def _check(spec: SyntheticSpec) -> list[str]:
    if spec.n_head * spec.head_dim != spec.n_embd:
        return ["bitnet needs n_head*head_dim == n_embd"]
    return []


def _layer(draw: Draw, spec: SyntheticSpec, il: int) -> list[Weight]:
    d, ff = spec.n_embd, spec.n_ff
    layer = LayerWeights(draw, spec, il)
    layer.norm("attn_norm", d)
    layer.qkv()
    layer.norm("attn_sub_norm", d)
    layer.attn_output()
    layer.norm("ffn_norm", d)
    layer.ffn_gate_up()
    layer.norm("ffn_sub_norm", ff)
    layer.ffn_down()
    return layer.weights


SYNTHETIC = SyntheticModel(
    spec=SyntheticSpec(n_layer=3),
    layer=_layer,
    check=_check,
    embedding_std=0.1,
    output_norm=1.5,
    ternary=True,
    # I2_S is microsoft/BitNet's format, which only its bitnet-b1.58 graph reads.
    file_architectures={"I2_S": "bitnet-b1.58"},
)
