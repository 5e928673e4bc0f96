"""The engine's operations against plain float64 definitions written out in the tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine import ops

RNG = np.random.default_rng(7)


def f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def test_rms_norm_matches_its_definition() -> None:
    x = f32(RNG.standard_normal((5, 64)) * 0.03)
    w = f32(1 + 0.1 * RNG.standard_normal(64))
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64**2).mean(axis=-1, keepdims=True) + 1e-5) * w
    np.testing.assert_allclose(ops.rms_norm(x, 1e-5) * w, expected, rtol=2e-6)


def naive_rope(x: np.ndarray, *, base: float, n_dims: int, mode: str, scale: float = 1.0, ff=None) -> np.ndarray:
    """x [n_tokens, n_head, head_dim] rotated in float64, one pair at a time."""
    out = x.astype(np.float64).copy()
    for p in range(x.shape[0]):
        for i in range(n_dims // 2):
            theta = p * scale * base ** (-2.0 * i / n_dims) / (1.0 if ff is None else ff[i])
            a, b = (2 * i, 2 * i + 1) if mode == "norm" else (i, i + n_dims // 2)
            x0, x1 = x[p, :, a].astype(np.float64), x[p, :, b].astype(np.float64)
            out[p, :, a] = x0 * np.cos(theta) - x1 * np.sin(theta)
            out[p, :, b] = x0 * np.sin(theta) + x1 * np.cos(theta)
    return np.asarray(out)


@pytest.mark.parametrize("mode", ["norm", "neox"])
@pytest.mark.parametrize("n_dims", [32, 16])
def test_rope_matches_pairwise_rotation(mode: str, n_dims: int) -> None:
    x = f32(RNG.standard_normal((9, 3, 32)))
    ff = f32(np.linspace(1, 4, n_dims // 2))
    cos, sin = ops.rope_cos_sin(np.arange(9), n_dims=n_dims, base=10000.0, freq_scale=0.5, freq_factors=ff)
    got = ops.apply_rope(x, cos, sin, rope_type=mode, n_dims=n_dims)  # type: ignore[arg-type]
    expected = naive_rope(x, base=10000.0, n_dims=n_dims, mode=mode, scale=0.5, ff=ff)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_array_equal(got[0], x[0])  # position 0 is not rotated
    np.testing.assert_array_equal(got[..., n_dims:], x[..., n_dims:])  # the rest passes through


def test_norm_and_neox_differ() -> None:
    x = f32(RNG.standard_normal((4, 1, 16)))
    cos, sin = ops.rope_cos_sin(np.arange(4), n_dims=16, base=10000.0)
    norm = ops.apply_rope(x, cos, sin, rope_type="norm", n_dims=16)
    neox = ops.apply_rope(x, cos, sin, rope_type="neox", n_dims=16)
    assert np.abs(norm[1:] - neox[1:]).max() > 0.1


@pytest.mark.parametrize(("window", "ahead", "self_"), [(0, 0, True), (3, 0, True), (0, 1, True), (0, 0, False)])
def test_causal_mask(window: int, ahead: int, self_: bool) -> None:
    allowed = ops.causal_mask(6, window=window, ahead=ahead, include_self=self_)
    for q in range(6):
        for k in range(6):
            expected = k <= q + ahead and (self_ or k != q) and (window == 0 or q - k < window)
            assert allowed[q, k] == expected, (q, k)


def naive_attention(q, k, v, *, allowed, scale, group):
    n, n_head, _ = q.shape
    out = np.zeros((n, n_head, v.shape[2]))
    for h in range(n_head):
        kv = h // group
        for i in range(n):
            s = np.array([q[i, h] @ k[j, kv] * scale if allowed[i, j] else -np.inf for j in range(n)])
            if np.all(np.isinf(s)):
                continue
            p = np.exp(s - s.max())
            p /= p.sum()
            out[i, h] = p @ v[:, kv]
    return out.reshape(n, -1)


def test_attention_matches_a_loop_with_grouped_heads() -> None:
    q, k, v = (f32(RNG.standard_normal((7, h, 8))) for h in (4, 2, 2))
    allowed = ops.causal_mask(7, window=3)
    kv_head = np.arange(4) // 2
    got = ops.attention(q, k, v, allowed=allowed, kq_scale=0.35, kv_head=kv_head)
    np.testing.assert_allclose(got, naive_attention(q, k, v, allowed=allowed, scale=0.35, group=2), atol=1e-5)


def test_attention_row_without_keys_is_zero() -> None:
    q, k, v = (f32(RNG.standard_normal((3, 1, 4))) for _ in range(3))
    out = ops.attention(
        q, k, v, allowed=ops.causal_mask(3, include_self=False), kq_scale=1.0, kv_head=np.zeros(1, np.int64)
    )
    assert np.all(out[0] == 0) and np.all(np.isfinite(out))


def test_gelu_goes_through_the_fp16_table() -> None:
    x = f32(np.array([-12.0, -10.0, -3.3, -0.1234567, 0.0, 0.7654321, 5.5, 10.0, 12.5]))
    got = ops.gelu_tanh_ggml_cpu(x)
    assert got[0] == 0 and got[1] == 0 and got[-2] == x[-2] and got[-1] == x[-1]
    inner = got[2:-2]
    np.testing.assert_array_equal(inner, inner.astype(np.float16).astype(np.float32))  # table values are fp16
    x64 = x.astype(np.float64)
    exact = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    np.testing.assert_allclose(got[2:-2], exact[2:-2], rtol=2e-3, atol=1e-3)


def test_q8_0_rounding_matches_gguf_py_round_trip() -> None:
    import gguf

    x = f32(RNG.standard_normal((3, 128)))
    q8 = gguf.GGMLQuantizationType.Q8_0
    expected = gguf.quants.dequantize(gguf.quants.quantize(x, q8), q8)
    np.testing.assert_array_equal(ops.round_activations(x, "Q4_0"), expected)


def test_q8_k_rounding_matches_the_reference_quantiser() -> None:
    x = f32(RNG.standard_normal((2, 512)))
    got = ops.round_activations(x, "Q4_K")
    for row in range(2):
        for b in range(2):
            block = x[row, b * 256 : (b + 1) * 256]
            signed_max = block[np.argmax(np.abs(block))]
            iscale = np.float32(-127.0) / signed_max
            q = np.minimum(np.rint(iscale * block), 127)
            np.testing.assert_array_equal(got[row, b * 256 : (b + 1) * 256], f32(q * (np.float32(1) / iscale)))


def test_bf16_and_f16_rounding() -> None:
    import gguf

    x = f32(RNG.standard_normal(64) * 100)
    bf16 = gguf.GGMLQuantizationType.BF16
    np.testing.assert_array_equal(
        ops.round_activations(x, "BF16"), gguf.quants.dequantize(gguf.quants.quantize(x, bf16), bf16)
    )
    np.testing.assert_array_equal(ops.round_activations(x, "F16"), x.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(ops.round_activations(x, "F32"), x)
