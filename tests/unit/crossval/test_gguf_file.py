"""Reading GGUF files: the tolerant reader, lazy dequantisation, and bad files as BadInput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine import i2s
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.errors import BadInput


def write_gguf(path: Path, architecture: str, tensors: list[tuple[str, np.ndarray, dict[str, Any]]]) -> Path:
    """A GGUF with some metadata and the given tensors (kwargs passed to add_tensor)."""
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    try:
        writer.add_uint32(f"{architecture}.block_count", 1)
        writer.add_array("test.strings", ["a", "héllo", "", "z" * 300])
        writer.add_array("test.floats", [0.5, -1.25, 3.0])
        for name, array, kwargs in tensors:
            writer.add_tensor(name, array, **kwargs)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def raw_tensor(type_id: int, shape: tuple[int, int], nbytes: int) -> tuple[np.ndarray, dict[str, Any]]:
    # gguf-py knows no such type: pass the bytes as int8 so it keeps the shape we give.
    return np.zeros(nbytes, dtype=np.int8), {"raw_shape": shape, "raw_dtype": type_id}


def test_gguf_py_alone_refuses_an_i2s_file_and_the_engine_reads_it(tmp_path: Path) -> None:
    from gguf import GGUFReader

    codes = np.random.default_rng(0).integers(-1, 2, size=(4, 128)).astype(np.float32)
    raw = i2s.encode(codes, 0.25).view(np.int8)
    path = write_gguf(
        tmp_path / "i2s.gguf",
        "bitnet-b1.58",
        [("w.weight", raw, {"raw_shape": (4, 128), "raw_dtype": 36}), ("n.weight", np.ones(8, np.float32), {})],
    )
    with pytest.raises(ValueError, match="36"):
        GGUFReader(path)
    model = GGUFModelFile(path)
    info = model.info("w.weight")
    assert (info.type_name, info.ne, info.shape) == ("I2_S", (128, 4), (4, 128))
    np.testing.assert_array_equal(model.weight("w.weight"), codes * np.float32(0.25))
    np.testing.assert_array_equal(model.weight("n.weight"), np.ones(8, np.float32))


@pytest.mark.parametrize(
    ("type_id", "architecture", "label"), [(38, "bitnet-b1.58", "TL1"), (39, "bitnet-b1.58", "TL2")]
)
def test_bitnet_lookup_table_formats_are_bad_input(tmp_path: Path, type_id: int, architecture: str, label: str) -> None:
    data, kwargs = raw_tensor(type_id, (4, 128), 4 * 128 // 4 + 32)
    path = write_gguf(tmp_path / "tl.gguf", architecture, [("w.weight", data, kwargs)])
    model = GGUFModelFile(path)
    assert model.info("w.weight").type_name == label
    with pytest.raises(BadInput, match=f"{label} lookup-table format") as caught:
        model.check_decodable(["w.weight"])
    assert "I2_S" in caught.value.next_step


def test_type_39_outside_bitnet_files_is_upstream_mxfp4(tmp_path: Path) -> None:
    import gguf

    values = np.linspace(-2, 2, 64, dtype=np.float32).reshape(2, 32)
    quantized = gguf.quants.quantize(values, gguf.GGMLQuantizationType.MXFP4)
    path = write_gguf(
        tmp_path / "mxfp4.gguf", "llama", [("w.weight", quantized, {"raw_dtype": gguf.GGMLQuantizationType.MXFP4})]
    )
    model = GGUFModelFile(path)
    assert model.info("w.weight").type_name == "MXFP4"
    expected = gguf.quants.dequantize(quantized, gguf.GGMLQuantizationType.MXFP4)
    np.testing.assert_array_equal(model.weight("w.weight"), expected)


def test_unknown_type_id_is_bad_input_naming_the_tensor(tmp_path: Path) -> None:
    data, kwargs = raw_tensor(250, (2, 32), 64)
    path = write_gguf(tmp_path / "odd.gguf", "llama", [("blk.0.odd.weight", data, kwargs)])
    model = GGUFModelFile(path)
    with pytest.raises(BadInput, match=r"blk\.0\.odd\.weight .*type id 250"):
        model.check_decodable(["blk.0.odd.weight"])


def test_metadata_arrays_are_read_whole(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "meta.gguf", "llama", [("n.weight", np.ones(4, np.float32), {})])
    model = GGUFModelFile(path)
    assert model.get("test.strings") == ["a", "héllo", "", "z" * 300]
    assert model.string_array_bytes("test.strings")[1] == "héllo".encode()
    assert model.array_length("test.strings") == 4
    assert model.get("test.floats") == [0.5, -1.25, 3.0]
    assert model.numeric_array("test.floats").tolist() == [0.5, -1.25, 3.0]  # type: ignore[union-attr]
    assert model.get_int("llama.block_count") == 1


def test_vocabulary_matches_gguf_py(tiny_vocab: Path) -> None:
    from gguf import GGUFReader

    reference = GGUFReader(tiny_vocab)
    model = GGUFModelFile(tiny_vocab)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert model.get(key) == reference.fields[key].contents(), key


def test_quantised_tensors_dequantise_like_gguf_py_and_are_cached(tmp_path: Path) -> None:
    import gguf

    values = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    tensors = []
    for name in ("Q8_0", "Q4_0", "Q5_0", "TQ2_0", "BF16"):
        qtype = gguf.GGMLQuantizationType[name]
        tensors.append((name, gguf.quants.quantize(values, qtype), {"raw_dtype": qtype}))
    tensors.append(("F16", values.astype(np.float16), {}))
    path = write_gguf(tmp_path / "q.gguf", "llama", tensors)
    model = GGUFModelFile(path)
    for name, data, kwargs in tensors:
        expected = gguf.quants.dequantize(data, kwargs.get("raw_dtype", gguf.GGMLQuantizationType.F16))
        got = model.weight(name)
        assert got.dtype == np.float32 and got.shape == (64, 256)
        np.testing.assert_array_equal(got, expected, err_msg=name)
        assert model.weight(name) is got  # decoded once
        rows = np.array([3, 0, 63])
        np.testing.assert_array_equal(GGUFModelFile(path).rows(name, rows), expected[rows], err_msg=name)


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        GGUFModelFile(tmp_path / "nope.gguf")


def test_not_a_gguf_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a model at all" * 10)
    with pytest.raises(BadInput, match="not a readable GGUF"):
        GGUFModelFile(path)


def test_truncated_file_is_bad_input(tmp_path: Path, model_factory: Any) -> None:
    source = model_factory("llama")
    data = source.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: len(data) - 4096])
    with pytest.raises(BadInput, match=r"output\.weight extends past the end of the file \(truncated"):
        GGUFModelFile(path)


def test_missing_tensor_and_key_name_themselves(model_factory: Any) -> None:
    model = GGUFModelFile(model_factory("llama"))
    with pytest.raises(BadInput, match=r"no tensor blk\.9\.attn_q\.weight"):
        model.info("blk.9.attn_q.weight")
    with pytest.raises(BadInput, match=r"lacks the metadata key llama\.nothing"):
        model.get_int("llama.nothing")
