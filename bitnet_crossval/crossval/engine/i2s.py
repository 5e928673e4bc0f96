"""microsoft/BitNet's I2_S tensor format, for the engine: the codec lives in
:mod:`bitnet_crossval.util.i2s`, where the float copy of a model (``reference.dequantize``) reads
it too."""

from __future__ import annotations

from bitnet_crossval.util.i2s import GROUP, TAIL_BYTES, decode, encode, tensor_nbytes

__all__ = ["GROUP", "TAIL_BYTES", "decode", "encode", "tensor_nbytes"]
