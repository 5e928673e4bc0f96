"""The ``llama`` forward pass (src/models/llama.cpp of the pinned llama.cpp).

RMSNorm, RoPE NORM applied to Q/K as stored (the converter's row permutation is baked into
the GGUF), grouped-query attention scaled by 1/sqrt(head_dim) (``llama`` never reads
attention.scale), SiLU-gated FFN, optional biases and ``rope_freqs``, output tied to the
token embedding when the file has no ``output`` tensor.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.graph import Qkv, Run

F32Array = npt.NDArray[np.float32]


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
