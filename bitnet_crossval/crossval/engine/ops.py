"""The operations of the forward passes, with ggml's CPU semantics.

Everything is float32, as in llama.cpp; where ggml accumulates in double (the sum of squares
of RMSNorm, the softmax denominator) so does this module, and where ggml rounds through a
narrower type on purpose (the GELU lookup table goes through fp16) this module rounds the
same way, because those roundings are part of what llama.cpp computes. Shapes put the token
axis first, like ggml's ``ne`` reversed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]
RopeType = Literal["norm", "neox"]
Activation = Literal["silu", "relu2", "gelu"]


def f32(x: npt.ArrayLike) -> F32Array:
    """``x`` as a float32 array (no copy when it already is one)."""
    return np.asarray(x, dtype=np.float32)


def rms_norm(x: F32Array, eps: float) -> F32Array:
    """ggml_rms_norm over the last axis: squares summed in double, the scale in float."""
    squares = np.square(x)  # float32 products, as ggml forms x*x before widening
    mean = (squares.sum(axis=-1, dtype=np.float64, keepdims=True) / x.shape[-1]).astype(np.float32)
    scale = np.float32(1.0) / np.sqrt(mean + np.float32(eps), dtype=np.float32)
    return f32(np.multiply(x, scale, dtype=np.float32))


def rope_cos_sin(
    positions: npt.NDArray[np.int64],
    *,
    n_dims: int,
    base: float,
    freq_scale: float = 1.0,
    freq_factors: F32Array | None = None,
    attn_factor: float = 1.0,
) -> tuple[F32Array, F32Array]:
    """cos and sin tables ``[n_tokens, n_dims/2]`` as ggml_rope_cache_init builds them.

    ggml walks theta down the dimensions by repeated float multiplication (not a power per
    dimension), so this does the same: the rounding of that product is part of the result.
    cos/sin are taken in double and rounded once, like a correctly rounded cosf/sinf.
    """
    theta_scale = np.float32(base) ** np.float32(np.float32(-2.0) / np.float32(n_dims))
    theta = positions.astype(np.float32)
    half = n_dims // 2
    cos = np.empty((positions.shape[0], half), dtype=np.float32)
    sin = np.empty((positions.shape[0], half), dtype=np.float32)
    scale = np.float32(freq_scale)
    mscale = np.float32(attn_factor)
    for i in range(half):
        ff = np.float32(freq_factors[i]) if freq_factors is not None else np.float32(1.0)
        t = (theta / ff) * scale
        cos[:, i] = np.cos(t.astype(np.float64)).astype(np.float32) * mscale
        sin[:, i] = np.sin(t.astype(np.float64)).astype(np.float32) * mscale
        theta = theta * theta_scale
    return cos, sin


def apply_rope(x: F32Array, cos: F32Array, sin: F32Array, *, rope_type: RopeType, n_dims: int) -> F32Array:
    """Rotate ``x`` ``[n_tokens, n_head, head_dim]``; dimensions past ``n_dims`` pass through.

    NORM rotates adjacent pairs (2i, 2i+1); NEOX rotates (i, i + n_dims/2).
    """
    out = x.copy()
    c = cos[:, None, :]
    s = sin[:, None, :]
    if rope_type == "norm":
        x0 = x[..., 0:n_dims:2]
        x1 = x[..., 1:n_dims:2]
        out[..., 0:n_dims:2] = x0 * c - x1 * s
        out[..., 1:n_dims:2] = x0 * s + x1 * c
    else:
        half = n_dims // 2
        x0 = x[..., :half]
        x1 = x[..., half:n_dims]
        out[..., :half] = x0 * c - x1 * s
        out[..., half:n_dims] = x0 * s + x1 * c
    return f32(out)


def causal_mask(
    n_tokens: int,
    *,
    window: int = 0,
    ahead: int = 0,
    include_self: bool = True,
) -> npt.NDArray[np.bool_]:
    """``allowed[q, k]``: key k is visible to query q.

    Causal: k <= q. With ``window`` > 0 (llama.cpp's standard sliding window) keys with
    q - k >= window are hidden as well. ``ahead`` and ``include_self`` exist for the
    deliberate mask faults only.
    """
    positions = np.arange(n_tokens)
    return attention_mask(positions, positions, window=window, ahead=ahead, include_self=include_self)


def attention_mask(
    q_positions: npt.NDArray[np.int64],
    k_positions: npt.NDArray[np.int64],
    *,
    window: int = 0,
    ahead: int = 0,
    include_self: bool = True,
) -> npt.NDArray[np.bool_]:
    """:func:`causal_mask` between queries and keys at the given positions (a block of queries
    against the keys of a KV cache)."""
    q = q_positions[:, None]
    k = k_positions[None, :]
    allowed = k <= q + ahead
    if not include_self:
        allowed &= k != q
    if window > 0:
        allowed &= (q - k) < window
    return allowed


# Scores held at once by :func:`attention` (float32 elements): long sequences take their heads a
# few at a time (one, for 256 queries against 4,096 keys), so what attention holds at once
# stays a few MB however long the sequence is.
ATTENTION_SCORES_BUDGET = 1 << 20


def attention(
    q: F32Array,
    k: F32Array,
    v: F32Array,
    *,
    allowed: npt.NDArray[np.bool_],
    kq_scale: float,
    kv_head: npt.NDArray[np.int64],
    kv_f16: bool = False,
) -> F32Array:
    """Multi-head attention, ggml's non-flash path, returning ``[n_tokens, n_head * head_dim_v]``.

    ``q`` is ``[n_tokens, n_head, head_dim]``, ``k`` and ``v`` ``[n_kv, n_head_kv, ...]`` (the
    same tokens, or a KV cache that holds them and the ones before), ``allowed`` ``[n_tokens,
    n_kv]``. ``kv_head[h]`` is the K/V head query head ``h`` reads (``h // (n_head /
    n_head_kv)`` in llama.cpp). Scores are k·q in float, then ``softmax(scores * kq_scale +
    mask)`` with the maximum subtracted and the denominator summed in double, as
    ggml_soft_max_ext does. A row with no visible key (possible only under a mask fault) gives
    zeros, not NaN. With ``kv_f16`` the cache rounding of an F16 KV cache is reproduced: K, V, Q
    and the probabilities pass through fp16, as ggml converts them for its f16 dot products.
    Heads are independent, so taking them a few at a time changes no value.
    """
    n_tokens, n_head = q.shape[0], q.shape[1]
    n_kv = k.shape[0]
    step = max(1, min(n_head, ATTENTION_SCORES_BUDGET // max(1, n_tokens * n_kv)))
    if step >= n_head:
        return _attention_heads(q, k, v, allowed=allowed, kq_scale=kq_scale, kv_head=kv_head, kv_f16=kv_f16)
    parts = [
        _attention_heads(
            q[:, h : h + step], k, v, allowed=allowed, kq_scale=kq_scale, kv_head=kv_head[h : h + step], kv_f16=kv_f16
        ).reshape(n_tokens, -1, v.shape[2])
        for h in range(0, n_head, step)
    ]
    return f32(np.concatenate(parts, axis=1).reshape(n_tokens, -1))


def _attention_heads(
    q: F32Array,
    k: F32Array,
    v: F32Array,
    *,
    allowed: npt.NDArray[np.bool_],
    kq_scale: float,
    kv_head: npt.NDArray[np.int64],
    kv_f16: bool,
) -> F32Array:
    qh = np.ascontiguousarray(q.transpose(1, 0, 2))  # [n_head, n_tokens, head_dim]
    kh = np.ascontiguousarray(k.transpose(1, 0, 2))[kv_head]  # [n_head, n_kv, head_dim]
    vh = np.ascontiguousarray(v.transpose(1, 0, 2))[kv_head]
    if kv_f16:
        qh = _to_f16(qh)
        kh = _to_f16(kh)
        vh = _to_f16(vh)
    scores = np.matmul(qh, kh.transpose(0, 2, 1))  # [n_head, n_tokens, n_kv]
    scores *= np.float32(kq_scale)
    scores = np.where(allowed[None, :, :], scores, np.float32(-np.inf))
    row_max = scores.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, np.float32(0.0))
    probs = np.exp(scores - row_max)
    del scores
    denom = probs.sum(axis=-1, dtype=np.float64, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(denom > 0, 1.0 / np.where(denom > 0, denom, 1.0), 0.0).astype(np.float32)
    probs *= inv
    if kv_f16:
        probs = _to_f16(probs)
    out = np.matmul(probs, vh)  # [n_head, n_tokens, head_dim_v]
    n_head, n_tokens, head_dim_v = out.shape
    return f32(np.ascontiguousarray(out.transpose(1, 0, 2)).reshape(n_tokens, n_head * head_dim_v))


def silu(x: F32Array) -> F32Array:
    return f32(x / (np.float32(1.0) + np.exp(-x)))


def gelu_tanh(x: F32Array) -> F32Array:
    """ggml_gelu_f32 in float: 0.5x(1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2)))."""
    a = np.float32(0.044715)
    c = np.float32(0.79788456080286535587989211986876)
    inner = c * x * (np.float32(1.0) + a * x * x)
    return f32(np.float32(0.5) * x * (np.float32(1.0) + np.tanh(inner.astype(np.float64)).astype(np.float32)))


def gelu_tanh_ggml_cpu(x: F32Array) -> F32Array:
    """GELU as ggml's CPU backend computes it: through a table indexed by the fp16 input.

    Inputs at or below -10 give 0, at or above 10 pass through; in between the input is rounded
    to fp16, GELU is evaluated on that in float and the result rounded to fp16 (GGML_GELU_FP16).
    """
    x16 = x.astype(np.float16).astype(np.float32)
    table = gelu_tanh(x16).astype(np.float16).astype(np.float32)
    out = np.where(x <= np.float32(-10.0), np.float32(0.0), np.where(x >= np.float32(10.0), x, table))
    return out.astype(np.float32)


def gated(gate: F32Array, up: F32Array, activation: Activation, *, gelu_fp16_table: bool = True) -> F32Array:
    """act(gate) * up (llama.cpp's LLM_FFN_PAR)."""
    if activation == "silu":
        act = silu(gate)
    elif activation == "gelu":
        act = gelu_tanh_ggml_cpu(gate) if gelu_fp16_table else gelu_tanh(gate)
    else:
        relu = np.maximum(gate, np.float32(0.0))
        act = relu * relu
    return f32(np.multiply(act, up, dtype=np.float32))


def linear(x: F32Array, weight: F32Array) -> F32Array:
    """x @ W^T for W stored ``[out, in]`` (ggml_mul_mat(W, x)); no transposed copy is made."""
    return f32(np.matmul(x, weight.T, dtype=np.float32))


# --- emulation of the activation rounding ggml does before a quantised dot product ---

# ggml's vec_dot_type per weight type (ggml-cpu.c type_traits_cpu): what the activations are
# converted to before they meet the weights.
_Q8_0_PARTNERS = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4"})
_Q8_K_PARTNERS = frozenset(
    {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S"}
    | {"IQ1_S", "IQ1_M", "IQ4_XS"}
)


def round_activations(x: F32Array, weight_type: str) -> F32Array:
    """``x`` as ggml's CPU backend hands it to a dot product with weights of ``weight_type``."""
    if weight_type == "F16":
        return _to_f16(x)
    if weight_type == "BF16":
        return _to_bf16(x)
    if weight_type in _Q8_0_PARTNERS and x.shape[-1] % 32 == 0:
        return _through_q8_0(x)
    if weight_type in _Q8_K_PARTNERS and x.shape[-1] % 256 == 0:
        return _through_q8_k(x)
    return x


def _to_f16(x: F32Array) -> F32Array:
    return x.astype(np.float16).astype(np.float32)


def _to_bf16(x: F32Array) -> F32Array:
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return f32(rounded.view(np.float32))


def _through_q8_0(x: F32Array) -> F32Array:
    """quantize_row_q8_0 (x86): d = amax/127 stored as fp16, q = round-half-even(x * 127/amax)."""
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    d16 = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, np.float32(127.0) / np.where(amax > 0, amax, 1), np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inv)
    return f32((q * d16).reshape(x.shape))


def _through_q8_k(x: F32Array) -> F32Array:
    """quantize_row_q8_K_ref: iscale = -127/max (signed max by magnitude), q = min(127, rint(iscale x))."""
    blocks = x.reshape(*x.shape[:-1], -1, 256)
    idx = np.abs(blocks).argmax(axis=-1)[..., None]
    signed_max = np.take_along_axis(blocks, idx, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127.0) / np.where(signed_max != 0, signed_max, 1), 0)
    iscale = iscale.astype(np.float32)
    q = np.minimum(np.rint(iscale * blocks), np.float32(127.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(iscale != 0, np.float32(1.0) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return f32((q * d).reshape(x.shape))
