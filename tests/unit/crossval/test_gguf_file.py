"""Reading GGUF files: the tolerant reader, lazy dequantisation, and bad files as BadInput."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile, gguf_dequantizes
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util import i2s
from tests.unit.crossval import gguf_bytes as gb
from tests.unit.crossval.test_gguf_header import MALFORMED, write_every_type


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


def _gguf_knows(type_name: str) -> bool:
    import gguf

    return type_name in gguf.GGMLQuantizationType.__members__


@pytest.mark.skipif(not _gguf_knows("MXFP4"), reason="this gguf release predates MXFP4 (type 39)")
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


@pytest.mark.skipif(_gguf_knows("MXFP4"), reason="this gguf release knows MXFP4 (type 39)")
def test_type_39_outside_bitnet_files_is_unknown_to_a_gguf_without_mxfp4(tmp_path: Path) -> None:
    data, kwargs = raw_tensor(39, (2, 32), 2 * 17)
    path = write_gguf(tmp_path / "mxfp4.gguf", "llama", [("w.weight", data, kwargs)])
    model = GGUFModelFile(path)
    assert model.info("w.weight").type_name == "MXFP4"
    with pytest.raises(BadInput, match=r"w\.weight .*type id 39, which this engine does not know"):
        model.check_decodable(["w.weight"])


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


def test_a_big_endian_file_reads_like_the_little_endian_one(tmp_path: Path) -> None:
    little = GGUFModelFile(write_every_type(tmp_path / "le.gguf"))
    big = GGUFModelFile(write_every_type(tmp_path / "be.gguf", big_endian=True))
    assert (little.byte_order, big.byte_order) == ("<", ">")
    assert list(big.metadata_keys()) == list(little.metadata_keys())
    for key in little.metadata_keys():
        assert big.get(key) == little.get(key), key
    for name in ("w.f32", "w.f16", "w.q8"):
        got = big.weight(name)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, little.weight(name), err_msg=name)
    np.testing.assert_array_equal(big.weight("w.f32"), np.arange(8, dtype=np.float32).reshape(2, 4))


def test_raw_fields_carry_gguf_py_value_types_a_writer_takes(tmp_path: Path) -> None:
    import gguf

    model = GGUFModelFile(write_every_type(tmp_path / "all.gguf"))
    field = model.raw_field("t.strings")
    assert field.types == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)
    assert all(type(t) is gguf.GGUFValueType for t in field.types)
    with pytest.raises(BadInput, match=r"lacks the metadata key t\.nothing"):
        model.raw_field("t.nothing")


def test_string_array_of_a_key_that_is_not_one_names_it(tmp_path: Path) -> None:
    model = GGUFModelFile(write_every_type(tmp_path / "all.gguf"))
    with pytest.raises(BadInput, match=r"t\.f32s .* should be an array of strings, found \[0\.5, -1\.25\]"):
        model.string_array("t.f32s")
    with pytest.raises(BadInput, match=r"t\.u8s .* should be a string, found \[0, 255, 7\]$"):
        model.get_str("t.u8s")
    assert model.array_length("t.str") is None and model.array_length("t.strings") == 4
    assert model.numeric_array("t.strings") is None


def _every_gguf_type() -> list[str]:
    import gguf

    return [t.name for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES and t.name not in {"F32", "F16"}]


@pytest.mark.parametrize("type_name", _every_gguf_type())
def test_every_type_gguf_py_knows_decodes_as_its_public_dequantize_does_or_is_bad_input(
    tmp_path: Path, type_name: str
) -> None:
    """Whether gguf-py can dequantise a type is asked of its public dequantize; the engine then
    decodes exactly what that function returns, or names the tensor and the type."""
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_rows, row_len = 3, block_size * 2
    raw = np.random.default_rng(int(qtype)).integers(0, 256, n_rows * (row_len // block_size) * type_size, np.uint8)
    architecture = "llama"
    path = write_gguf(
        tmp_path / "t.gguf", architecture, [("w.weight", *raw_tensor(int(qtype), (n_rows, row_len), raw.size))]
    )
    path.write_bytes(path.read_bytes()[: -raw.size - (-raw.size % 32)] + raw.tobytes() + b"\0" * (-raw.size % 32))
    model = GGUFModelFile(path)
    assert model.info("w.weight").type_name == type_name
    try:
        with np.errstate(all="ignore"):  # random bytes make NaN and infinite scales
            expected = gguf.quants.dequantize(raw.reshape(n_rows, -1), qtype)
    except NotImplementedError:
        assert not gguf_dequantizes(int(qtype))
        with pytest.raises(BadInput, match=rf"w\.weight .* has type {type_name}, which gguf-py cannot dequantise"):
            model.check_decodable(["w.weight"])
        return
    assert gguf_dequantizes(int(qtype))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(
            model.weight("w.weight"), np.asarray(expected, np.float32).reshape(n_rows, row_len)
        )


def test_the_probe_knows_the_common_types_and_refuses_plain_integers() -> None:
    import gguf

    types = gguf.GGMLQuantizationType
    assert all(gguf_dequantizes(int(types[n])) for n in ("BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K", "TQ2_0"))
    assert not any(gguf_dequantizes(int(types[n])) for n in ("I8", "I32", "F64"))


MALFORMED_MODELS = [
    *MALFORMED,
    (
        "tensor-offset-past-the-end",
        gb.gguf(
            [gb.string_key("general.architecture", "llama")], [gb.tensor_entry("w", (8,), 0, 2**40)], data=b"\0" * 32
        ),
        "the tensor w extends past the end of the file (truncated download?)",
    ),
    (
        "tensor-longer-than-the-file",
        gb.gguf(
            [gb.string_key("general.architecture", "llama")], [gb.tensor_entry("w", (2**40,), 0, 0)], data=b"\0" * 32
        ),
        "the tensor w extends past the end of the file (truncated download?)",
    ),
    (
        "i2s-tensor-past-the-end",
        gb.gguf(
            [gb.string_key("general.architecture", "bitnet-b1.58")],
            [gb.tensor_entry("w", (128, 4), 36, 0)],
            data=b"\0" * 32,
        ),
        "the tensor w extends past the end of the file (truncated download?)",
    ),
]


@pytest.mark.parametrize(("data", "fragment"), [m[1:] for m in MALFORMED_MODELS], ids=[m[0] for m in MALFORMED_MODELS])
def test_a_malformed_model_is_exit_6_in_one_sentence(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(BadInput) as caught:
        GGUFModelFile(path)
    error = caught.value
    assert error.exit_code == 6
    if not data:
        fragment = "it is empty"
    assert error.message == f"{path} is not a readable GGUF file ({error.message.split(' file (', 1)[1]}"
    assert fragment in error.message and "\n" not in error.message
    assert error.next_step


def test_the_small_hand_packed_model_reads(tmp_path: Path) -> None:
    for order in "<>":
        path = tmp_path / "small.gguf"
        path.write_bytes(gb.small_model(order=order))
        model = GGUFModelFile(path)
        assert model.architecture == "llama" and model.get("test.strings") == ["a", "héllo", ""]
        np.testing.assert_array_equal(model.weight("a.weight"), np.arange(8, dtype=np.float32).reshape(2, 4))
        np.testing.assert_array_equal(model.weight("b.weight"), np.arange(8, 12, dtype=np.float32))


def test_an_architecture_that_is_not_a_string_is_named(tmp_path: Path) -> None:
    path = tmp_path / "arch.gguf"
    path.write_bytes(gb.gguf([gb.uint32_key("general.architecture", 5)]))
    with pytest.raises(BadInput, match=r"general\.architecture of .* should be a string, found 5"):
        GGUFModelFile(path)
    path.write_bytes(gb.gguf([gb.key_value("general.architecture", gb.STRING, gb.string(b"\xff\xfe"))]))
    with pytest.raises(BadInput, match=r"the metadata key general\.architecture of .* cannot be read \('utf-8'"):
        GGUFModelFile(path)


def test_a_long_wrong_value_is_cut_in_the_sentence(tiny_vocab: Path) -> None:
    with pytest.raises(BadInput) as caught:
        GGUFModelFile(tiny_vocab).get_int("tokenizer.ggml.scores")
    assert caught.value.message.endswith("…") and len(caught.value.message.split("found ", 1)[1]) == 81


@pytest.mark.parametrize(("type_id", "name", "block_bytes"), [(8, "Q8_0", 34), (6, "Q5_0", 22)])
def test_own_decoders_give_gguf_py_s_values_bit_for_bit(type_id: int, name: str, block_bytes: int) -> None:
    """Random blocks (every code, every fifth-bit pattern) with finite fp16 scales of every size."""
    from bitnet_crossval.crossval.engine import gguf_file

    rng = np.random.default_rng(type_id)
    n_blocks = 4096
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    scales = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-6, 4, n_blocks)).astype(np.float16)
    raw[:, :2] = scales.view(np.uint8).reshape(n_blocks, 2)
    info = gguf_file.TensorInfo(
        name="t", type_id=type_id, type_name=name, ne=(64, n_blocks // 2), offset=0, n_bytes=raw.size
    )
    own = gguf_file._OWN_DECODERS[type_id](raw.reshape(-1), info)
    reference = gguf_file._decode_with_gguf(raw.reshape(-1), info)
    assert own.shape == reference.shape == (n_blocks // 2, 64)
    assert np.array_equal(own.view(np.uint32), reference.view(np.uint32))
