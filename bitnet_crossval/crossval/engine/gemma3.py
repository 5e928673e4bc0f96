"""The ``gemma3`` forward pass (src/models/gemma3.cpp of the pinned llama.cpp).

Embeddings scaled by sqrtf(n_embd) in float; per layer: RMSNorm, per-head RMSNorm of Q and K,
RoPE NEOX with the layer's own base (sliding-window layers use ``rope.freq_base_swa``, global
layers ``rope.freq_base`` and the rope scaling), Q scaled by the attention scale before
attention (kq_scale 1), a sliding-window causal mask on SWA layers, post-attention norm,
GELU(tanh)-gated FFN, post-FFN norm; final norm, logits, optional final softcap. Norm weights
in a GGUF already include Gemma's +1.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.graph import Qkv, Run

F32Array = npt.NDArray[np.float32]


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
        q = qkv.q if run.faulty("missing_qk_norm") else run.norm(qkv.q, p + "attn_q_norm.weight", il)
        run.rec("Qcur_normed", il, q)
        q = run.rope(q, il)
        run.rec("Qcur", il, q)
        if not iswa:  # a plain KV-cache graph evaluates V before K
            run.rec("Vcur", il, qkv.v)
        k = qkv.k if run.faulty("missing_qk_norm") else run.norm(qkv.k, p + "attn_k_norm.weight", il)
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
    logits = run.output(cur)
    cap = hp.final_logit_softcap
    if cap:
        logits = np.multiply(logits, np.float32(1.0) / np.float32(cap), dtype=np.float32)
        logits = np.tanh(logits.astype(np.float64)).astype(np.float32)
        logits = np.multiply(logits, np.float32(cap), dtype=np.float32)
    run.rec("result_output", -1, logits)
    return logits
