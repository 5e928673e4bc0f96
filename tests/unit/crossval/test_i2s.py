"""The I2_S decoder against an encoder transcribed, loop for loop, from microsoft/BitNet.

The reference encoder below is written from ``quantize_i2_s`` (src/ggml-bitnet-mad.cpp, the
x86 build: 128-value groups, byte ``i*32 + j%32`` gets code ``q8 << (6 - 2*(j/32))``, then the
float32 scale after the packed bytes) and shares no code with the library's vectorised
encoder/decoder, so a layout mistake in either shows up here.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.util import i2s


def reference_quantize_i2_s(src: list[float]) -> bytes:
    n = len(src)
    i2_scale = max(abs(float(x)) for x in src)
    q8 = []
    for x in src:
        if abs(float(x)) < 1e-6:
            q8.append(1)
        else:
            q8.append(2 if float(x) * i2_scale > 0 else 0)
    dst = bytearray(n // 4)
    for i in range(n // 128):
        for j in range(128):
            group_idx = j // 32
            group_pos = j % 32
            dst[i * 32 + group_pos] |= (q8[i * 128 + j] << (6 - 2 * group_idx)) & 0xFF
    return bytes(dst) + struct.pack("<f", i2_scale) + bytes(28)


def ternary(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, size=n).astype(np.float32)


@pytest.mark.parametrize(("n", "scale"), [(128, 1.0), (256, 0.0371), (128 * 7, 2.5)])
def test_decode_inverts_the_reference_encoder(n: int, scale: float) -> None:
    codes = ternary(n, seed=n)
    values = (codes * np.float32(scale)).astype(np.float32)
    raw = np.frombuffer(reference_quantize_i2_s(values.tolist()), dtype=np.uint8)
    assert raw.size == i2s.tensor_nbytes(n)
    decoded = i2s.decode(raw, n)
    np.testing.assert_array_equal(decoded, values)


def test_library_encoder_writes_the_reference_bytes() -> None:
    codes = ternary(512, seed=3)
    scale = float(np.float32(0.125))
    expected = reference_quantize_i2_s((codes * np.float32(scale)).tolist())
    assert i2s.encode(codes, scale).tobytes() == expected


def test_layout_puts_value_j_in_byte_j_mod_32_at_the_group_shift() -> None:
    # One +1 at position 70 of the second group: byte 32 + 70 % 32, bits 3-2 (70 // 32 == 2).
    codes = np.zeros(256, dtype=np.float32)
    codes[128 + 70] = 1.0
    raw = i2s.encode(codes, 1.0)
    packed = raw[:64]
    zero_byte = 0b01010101  # four zeros (code 1)
    changed = [k for k in range(64) if packed[k] != zero_byte]
    assert changed == [32 + 70 % 32]
    assert packed[32 + 70 % 32] == 0b01011001  # code 2 in bits 3-2


def test_unused_code_three_reads_as_zero() -> None:
    raw = np.concatenate([np.full(32, 0xFF, dtype=np.uint8), np.zeros(32, dtype=np.uint8)])
    raw[32:36] = np.frombuffer(struct.pack("<f", 3.0), dtype=np.uint8)
    np.testing.assert_array_equal(i2s.decode(raw, 128), np.zeros(128, dtype=np.float32))


def test_incomplete_group_is_bad_input() -> None:
    with pytest.raises(BadInput, match="128-value groups"):
        i2s.decode(np.zeros(100, dtype=np.uint8), 130)


def test_truncated_tensor_is_bad_input() -> None:
    raw = i2s.encode(ternary(256, seed=1), 1.0)[:60]
    with pytest.raises(BadInput, match="truncated"):
        i2s.decode(raw, 256)


def test_encoder_refuses_non_ternary_values() -> None:
    with pytest.raises(ValueError, match="-1, 0 and \\+1"):
        i2s.encode(np.full(128, 0.5, dtype=np.float32), 1.0)
