"""A real GGUF model written again with gguf-py, with some tensors or hyperparameters changed:
the models whose numbers are not finite (NaN weights, an infinite embedding row, a NaN RoPE
base, a negative norm epsilon) that the crossval must never call parity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Edit = Callable[[npt.NDArray[Any]], npt.NDArray[Any]]


def edited_gguf(
    src: Path,
    dst: Path,
    *,
    tensors: Mapping[str, Edit] | None = None,
    metadata: Mapping[str, float] | None = None,
    added: Mapping[str, float] | None = None,
) -> Path:
    """``src`` with each tensor named in ``tensors`` replaced by what its edit returns (same shape
    and type), each metadata key in ``metadata`` given a new value of the same type, and the keys
    of ``added`` written as new float32 values."""
    import gguf

    tensors = tensors or {}
    metadata = metadata or {}
    reader = gguf.GGUFReader(src)
    unknown = (set(tensors) - {t.name for t in reader.tensors}) | (set(metadata) - set(reader.fields))
    assert not unknown, f"{src} has no {sorted(unknown)}"
    writer = gguf.GGUFWriter(dst, str(reader.fields["general.architecture"].contents()))
    try:
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = metadata.get(field.name, field.contents())
            writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
        for key, number in (added or {}).items():
            writer.add_float32(key, number)
        for tensor in reader.tensors:
            data = np.array(tensor.data)
            if tensor.name in tensors:
                data = tensors[tensor.name](data.copy())
            shape = [int(d) for d in reversed(tensor.shape)]
            writer.add_tensor(tensor.name, data, raw_shape=shape, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return dst


def all_nan(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array[...] = np.nan
    return array


def all_zero(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array[...] = 0
    return array


def infinite_row(row: int) -> Edit:
    def edit(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        array[row] = np.inf
        return array

    return edit
