"""The GGUF container layer: locating metadata, directory and data, and writing a file from parts."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.gguf_container import FileRange, OutputTensor, planned_size, read_layout, write_gguf
from tests.unit.reference.conftest import ModelMaker


def _gguf_py_view(path: Path) -> list[tuple[str, int, int, int]]:
    import gguf

    reader = gguf.GGUFReader(path)
    return [(t.name, int(t.tensor_type), int(t.data_offset), int(t.n_bytes)) for t in reader.tensors]


def test_the_layout_agrees_with_gguf_py(synthetic: ModelMaker) -> None:
    model = synthetic("llama", "Q8_0")
    layout = read_layout(model)
    assert layout.version == 3
    assert layout.alignment == 32
    assert layout.architecture == "llama"
    assert layout.split_count == 0
    view = _gguf_py_view(model)
    assert [(t.name, t.type_id, t.offset) for t in layout.tensors] == [(n, ty, off) for n, ty, off, _ in view]
    assert layout.data_start <= min(t.offset for t in layout.tensors)
    # the key-value section starts after the 24-byte header and holds every key
    kv = layout.kv_bytes()
    assert layout.kv_span[0] == 24
    assert b"general.architecture" in kv and b"tokenizer.ggml.tokens" in kv
    assert b"token_embd.weight" not in kv  # the directory comes after it


def test_copying_every_tensor_as_it_is_writes_the_same_bytes(synthetic: ModelMaker, tmp_path: Path) -> None:
    model = synthetic("gemma3", "Q4_0")
    layout = read_layout(model)
    sizes = {name: n_bytes for name, _, _, n_bytes in _gguf_py_view(model)}
    tensors = [
        OutputTensor(
            name=t.name,
            ne=t.ne,
            type_id=t.type_id,
            n_bytes=sizes[t.name],
            data=FileRange(path=model, offset=t.offset, n_bytes=sizes[t.name]),
        )
        for t in layout.tensors
    ]
    out = tmp_path / "copy.gguf"
    seen: list[int] = []
    with out.open("wb") as handle:
        written = write_gguf(handle, layout=layout, tensors=tensors, on_bytes=seen.append)
    assert out.read_bytes() == model.read_bytes()
    assert written == out.stat().st_size == planned_size(layout, tensors)
    assert seen == sorted(seen) and seen[-1] == written


def test_tensor_data_made_on_the_fly_and_a_custom_alignment(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "aligned.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.data_alignment = 64
    writer.add_custom_alignment(64)
    writer.add_tensor("a.weight", np.arange(10, dtype=np.float32))
    writer.add_tensor("b.weight", np.ones((3, 5), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    layout = read_layout(path)
    assert layout.alignment == 64
    assert all(t.offset % 64 == 0 for t in layout.tensors)
    a, b = layout.tensors
    assert (a.ne, a.type_id, a.plain_nbytes()) == ((10,), 0, 40)
    assert (b.ne, b.type_id, b.plain_nbytes()) == ((5, 3), 1, 30)

    replaced = np.full((3, 5), 7.0, dtype=np.float32)
    tensors = [
        OutputTensor(name="b.weight", ne=(5, 3), type_id=0, n_bytes=60, data=lambda: replaced),
        OutputTensor(
            name="a.weight", ne=(10,), type_id=0, n_bytes=40, data=FileRange(path=path, offset=a.offset, n_bytes=40)
        ),
    ]
    out = tmp_path / "out.gguf"
    with out.open("wb") as handle:
        write_gguf(handle, layout=layout, tensors=tensors)
    reader = gguf.GGUFReader(out)
    assert [t.name for t in reader.tensors] == ["b.weight", "a.weight"]
    assert np.array_equal(reader.tensors[0].data, replaced)
    assert np.array_equal(reader.tensors[1].data, np.arange(10, dtype=np.float32))
    assert read_layout(out).kv_bytes() == layout.kv_bytes()


def test_tensors_of_types_gguf_py_does_not_know_are_located(synthetic: ModelMaker) -> None:
    model = synthetic("bitnet-b1.58", "I2_S")
    layout = read_layout(model)
    assert layout.architecture == "bitnet-b1.58"
    i2s = [t for t in layout.tensors if t.type_id == 36]
    assert i2s and all(not t.is_plain for t in i2s)
    assert layout.tensor("token_embd.weight").type_id == 1  # the embedding of a ternary model is F16


def test_files_that_are_not_gguf_are_bad_input(tmp_path: Path, synthetic: ModelMaker) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(BadInput, match="does not start with 'GGUF'"):
        read_layout(not_gguf)
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(b"GGUF")
    with pytest.raises(BadInput, match="shorter than a GGUF header"):
        read_layout(tiny)
    big_endian = tmp_path / "be.gguf"
    big_endian.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    with pytest.raises(BadInput, match="little-endian"):
        read_layout(big_endian)
    whole = synthetic("llama", "Q8_0").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:5000])  # inside the vocabulary
    with pytest.raises(BadInput, match="truncated"):
        read_layout(cut)
    with pytest.raises(BadInput, match="cannot be read"):
        read_layout(tmp_path / "missing.gguf")
