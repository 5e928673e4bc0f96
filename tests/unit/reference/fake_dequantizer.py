"""A stand-in for the shim's ``quantize --type F32|F16|BF16 --allow-requantize 1``, in Python.

It writes what llama.cpp's quantiser writes in the ways the float copy must cope with: the
tensors sorted by name (not in the input's order), its own metadata (not the input's), and each
quantised tensor dequantised (here with gguf-py, which agrees with ggml bit for bit on the
types the synthetic models use). It can also misbehave as a test asks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitnet_crossval.reference.client import Quantization
from bitnet_crossval.reference.dequantize import to_float_type

COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


@dataclass
class FakeDequantizer:
    name: str = "llama"
    commit: str = COMMIT
    lib_dir: str = ""
    leave_quantized: frozenset[str] = frozenset()  # tensors it passes through unchanged
    wait_for: Path | None = None  # block in quantize until this file exists
    started: Path | None = None  # touched when quantize starts
    delay: float = 0.0
    calls: list[dict[str, Any]] = field(default_factory=list)

    def info(self, model: Path | None = None, *, load_weights: bool = False) -> dict[str, Any]:
        return {"backend": self.name, "backend_commit": self.commit, "lib_dir": self.lib_dir}

    def quantize(
        self, model: Path, out: Path, type: str, *, threads: int = 1, allow_requantize: bool = False
    ) -> Quantization:
        import gguf
        from gguf.quants import dequantize

        reader = gguf.GGUFReader(model)
        self.calls.append(
            {
                "type": type,
                "allow_requantize": allow_requantize,
                "tensors": [t.name for t in reader.tensors],
                "input_types": sorted({t.tensor_type.name for t in reader.tensors}),
            }
        )
        if self.started is not None:
            self.started.touch()
        while self.wait_for is not None and not self.wait_for.exists():
            time.sleep(0.02)
        time.sleep(self.delay)
        assert allow_requantize, "a float copy must allow requantising"
        writer = gguf.GGUFWriter(out, "fake-backend-output")
        writer.add_uint32("general.file_type", {"F32": 0, "F16": 1, "BF16": 32}[type])
        for tensor in sorted(reader.tensors, key=lambda t: t.name):
            qtype = tensor.tensor_type
            shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
            if tensor.name in self.leave_quantized:
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_dtype=qtype)  # rows of bytes
                continue
            values = np.asarray(dequantize(np.asarray(tensor.data), qtype), dtype=np.float32).reshape(shape)
            converted = to_float_type(values, type)  # type: ignore[arg-type]
            if type == "BF16":
                writer.add_tensor(
                    tensor.name, converted.view(np.uint16), raw_shape=shape, raw_dtype=gguf.GGMLQuantizationType.BF16
                )
            else:
                writer.add_tensor(tensor.name, converted)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return Quantization(out=out, type=type, size_bytes=out.stat().st_size, metadata={})
