"""An independent float64 forward pass for F32 synthetic models, written from llama.cpp's graphs.

It shares no code with the engine: weights come straight from gguf-py's reader, every head and
position is a loop or an einsum spelled out here, RoPE angles are computed as a power per
dimension (the engine repeats ggml's running product), and GELU is the exact tanh formula (the
engine goes through ggml's fp16 table unless told otherwise). Agreement to ~1e-5 therefore
checks the engine's semantics, not its implementation against itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _read(path: Path) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    meta: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # header bookkeeping fields without a plain value
            continue
    weights = {
        t.name: np.asarray(t.data, dtype=np.float64).reshape(tuple(reversed(t.shape.tolist()))) for t in reader.tensors
    }
    return meta["general.architecture"], meta, weights


def _rms(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    y = x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    return np.asarray(y if w is None else y * w)


def _rope(x: np.ndarray, base: float, mode: str) -> np.ndarray:
    n, _, d = x.shape
    out = x.copy()
    for p in range(n):
        for i in range(d // 2):
            t = p * base ** (-2.0 * i / d)
            a, b = (2 * i, 2 * i + 1) if mode == "norm" else (i, i + d // 2)
            x0, x1 = x[p, :, a].copy(), x[p, :, b].copy()
            out[p, :, a] = x0 * np.cos(t) - x1 * np.sin(t)
            out[p, :, b] = x0 * np.sin(t) + x1 * np.cos(t)
    return np.asarray(out)


def _attention(q, k, v, *, scale: float, window: int) -> np.ndarray:
    n, n_head, _ = q.shape
    group = n_head // k.shape[1]
    out = np.zeros((n, n_head, v.shape[2]))
    for h in range(n_head):
        for i in range(n):
            keys = [j for j in range(i + 1) if window == 0 or i - j < window]
            s = np.array([q[i, h] @ k[j, h // group] for j in keys]) * scale
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, h] = sum(pj * v[j, h // group] for pj, j in zip(p, keys, strict=True))
    return np.asarray(out.reshape(n, -1))


def forward(path: Path, tokens: list[int], *, bitnet_activation: str = "silu") -> np.ndarray:
    arch, meta, w = _read(path)
    a = arch
    n_layer = meta[f"{a}.block_count"]
    n_head, n_kv = meta[f"{a}.attention.head_count"], meta[f"{a}.attention.head_count_kv"]
    eps = meta[f"{a}.attention.layer_norm_rms_epsilon"]
    base = meta.get(f"{a}.rope.freq_base", 10000.0)
    n_embd = meta[f"{a}.embedding_length"]
    hd = meta.get(f"{a}.attention.key_length", n_embd // n_head)
    n = len(tokens)
    x = w["token_embd.weight"][tokens]
    if arch == "gemma3":
        x = x * np.sqrt(n_embd)
        window = meta.get(f"{a}.attention.sliding_window", 0)
        pattern = meta.get(f"{a}.attention.sliding_window_pattern", 6)
        base_swa = meta.get(f"{a}.rope.freq_base_swa", 10000.0)
    for il in range(n_layer):
        p = f"blk.{il}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(n, n_head, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(n, n_kv, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, n_kv, hd)
        if arch == "llama":
            o = _attention(_rope(q, base, "norm"), _rope(k, base, "norm"), v, scale=hd**-0.5, window=0)
            x = x + o @ w[p + "attn_output.weight"].T
            h = _rms(x, w[p + "ffn_norm.weight"], eps)
            g = h @ w[p + "ffn_gate.weight"].T
            f = (g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)
            x = x + f @ w[p + "ffn_down.weight"].T
        elif arch == "gemma3":
            swa = window > 0 and il % pattern < pattern - 1
            b = base_swa if swa else base
            q = _rope(_rms(q, w[p + "attn_q_norm.weight"], eps), b, "neox")
            k = _rope(_rms(k, w[p + "attn_k_norm.weight"], eps), b, "neox")
            o = _attention(q, k, v, scale=hd**-0.5, window=window if swa else 0)
            x = x + _rms(o @ w[p + "attn_output.weight"].T, w[p + "post_attention_norm.weight"], eps)
            h = _rms(x, w[p + "ffn_norm.weight"], eps)
            g = h @ w[p + "ffn_gate.weight"].T
            gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
            f = (gelu * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
            x = x + _rms(f, w[p + "post_ffw_norm.weight"], eps)
        else:  # bitnet
            o = _attention(_rope(q, base, "neox"), _rope(k, base, "neox"), v, scale=hd**-0.5, window=0)
            x = x + _rms(o, w[p + "attn_sub_norm.weight"], eps) @ w[p + "attn_output.weight"].T
            h = _rms(x, w[p + "ffn_norm.weight"], eps)
            g = h @ w[p + "ffn_gate.weight"].T
            act = g / (1 + np.exp(-g)) if bitnet_activation == "silu" else np.maximum(g, 0) ** 2
            f = _rms(act * (h @ w[p + "ffn_up.weight"].T), w[p + "ffn_sub_norm.weight"], eps)
            x = x + f @ w[p + "ffn_down.weight"].T
    out = w["output.weight"] if arch == "llama" and "output.weight" in w else w["token_embd.weight"]
    return np.asarray(_rms(x, w["output_norm.weight"], eps) @ out.T)
