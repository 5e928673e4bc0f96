"""The ``bitnet`` forward pass (src/models/bitnet.cpp of the pinned llama.cpp), which also
runs microsoft/BitNet's ``bitnet-b1.58`` / ``bitnet-25`` GGUFs.

Per layer: RMSNorm, Q/K/V (each times its optional ``.scale``), RoPE NEOX, attention scaled by
1/sqrt(head_dim), ``attn_sub_norm``, wo, residual; RMSNorm, act(gate)·up, ``ffn_sub_norm``
(over n_ff), down, residual. Logits always come from ``token_embd``. The activation is a
parameter: upstream llama.cpp and bitnet.cpp's 2024 fork use SiLU for ``bitnet``, while
BitNet b1.58 as trained (and the fork's ``bitnet-b1.58`` graph) uses squared ReLU.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.graph import Qkv, Run
from bitnet_crossval.crossval.engine.options import BitnetActivation

F32Array = npt.NDArray[np.float32]


def forward(run: Run, *, activation: BitnetActivation) -> F32Array:
    hp = run.hp
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
        cur = kqv if run.faulty("missing_sub_norm") else run.norm(kqv, p + "attn_sub_norm.weight", il)
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
