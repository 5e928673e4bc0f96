"""microsoft/BitNet's I2_S tensor format (ggml type 36), decoded and encoded with numpy.

Layout (``quantize_i2_s`` / ``dequantize_row_i2_s`` in microsoft/BitNet, x86 build), over the
tensor's values in storage order, flattened:

* groups of 128 values, each packed into 32 bytes: byte ``g`` of a group holds the values at
  positions ``g``, ``g + 32``, ``g + 64`` and ``g + 96`` of that group, in bits 7-6, 5-4, 3-2
  and 1-0 respectively;
* a 2-bit code ``c`` means ``c - 1``: 0 -> -1, 1 -> 0, 2 -> +1 (3 is never written; the
  reference decoder reads it as 0, and so does this one, while the 2024 bitnet.cpp kernel,
  which multiplies by ``c - 1``, would count it as +2);
* after the packed bytes (``n / 4`` of them) a 32-byte tail whose first four bytes are the
  float32 scale shared by the whole tensor. A value is ``scale * (c - 1)``.

There is no per-block scale: one float32 per tensor, as BitNet b1.58 trains it (absmean).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BadInput

GROUP = 128
TAIL_BYTES = 32
# code -> ternary value; code 3 is unused and reads as 0, as in the reference decoder.
_CODE_VALUES = np.array([-1.0, 0.0, 1.0, 0.0], dtype=np.float32)
_SHIFTS = np.array([6, 4, 2, 0], dtype=np.uint8)


def tensor_nbytes(n_elements: int) -> int:
    """Bytes one I2_S tensor of ``n_elements`` values takes in a GGUF file."""
    return n_elements // 4 + TAIL_BYTES


def decode(raw: npt.NDArray[np.uint8], n_elements: int) -> npt.NDArray[np.float32]:
    """The ``n_elements`` float32 values (flat, storage order) of one I2_S tensor."""
    if n_elements % GROUP != 0:
        raise BadInput(
            f"an I2_S tensor of {n_elements} values is not made of whole {GROUP}-value groups (corrupt file?)",
            next_step="re-download or re-convert the model",
        )
    packed_bytes = n_elements // 4
    if raw.size < packed_bytes + 4:
        raise BadInput(
            f"an I2_S tensor of {n_elements} values needs {tensor_nbytes(n_elements)} bytes, "
            f"the file holds {raw.size} (truncated?)",
            next_step="re-download or re-convert the model",
        )
    scale = float(raw[packed_bytes : packed_bytes + 4].view(np.float32)[0])
    groups = raw[:packed_bytes].reshape(-1, 1, 32)
    # [n_groups, 4 (bit field), 32 (byte in group)] -> positions field*32 + byte in the group
    codes = (groups >> _SHIFTS.reshape(1, 4, 1)) & 3
    values = _CODE_VALUES[codes].reshape(n_elements)
    values *= np.float32(scale)
    return np.asarray(values, dtype=np.float32)


def encode(ternary: npt.NDArray[np.integer] | npt.NDArray[np.floating], scale: float) -> npt.NDArray[np.uint8]:
    """I2_S bytes (packed codes + tail) for values in {-1, 0, +1} (any shape, storage order).

    The scale is stored once, in the first four bytes of the tail; the rest of the tail is zero.
    """
    flat = np.asarray(ternary).reshape(-1)
    if flat.size % GROUP != 0:
        raise ValueError(f"I2_S needs whole groups of {GROUP} values, got {flat.size}")
    rounded = np.rint(flat)
    if not np.array_equal(rounded, flat) or np.any(np.abs(rounded) > 1):
        raise ValueError("I2_S encodes only the values -1, 0 and +1")
    codes = (rounded.astype(np.int8) + 1).astype(np.uint8).reshape(-1, 4, 32)
    packed = np.bitwise_or.reduce(codes << _SHIFTS.reshape(1, 4, 1), axis=1).astype(np.uint8).reshape(-1)
    tail = np.zeros(TAIL_BYTES, dtype=np.uint8)
    tail[:4] = np.array([scale], dtype=np.float32).view(np.uint8)
    return np.concatenate([packed, tail])
