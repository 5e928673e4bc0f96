"""The GGUF header parser: what gguf-py writes reads back as gguf-py reads it (both byte orders,
every value type), and every malformed header is a ValueError saying what is wrong."""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine.gguf_header import (
    GGUFHeader,
    StringArray,
    StringRef,
    ValueType,
    read_header,
)
from tests.unit.crossval import gguf_bytes as gb

SCALARS: list[tuple[str, str, Any]] = [
    ("t.u8", "add_uint8", 200),
    ("t.i8", "add_int8", -5),
    ("t.u16", "add_uint16", 60000),
    ("t.i16", "add_int16", -30000),
    ("t.u32", "add_uint32", 4_000_000_000),
    ("t.i32", "add_int32", -2_000_000_000),
    ("t.f32", "add_float32", 0.1),
    ("t.bool", "add_bool", True),
    ("t.u64", "add_uint64", 2**63 + 5),
    ("t.i64", "add_int64", -(2**62)),
    ("t.f64", "add_float64", 0.1),
    ("t.str", "add_string", "héllo ▁wörld"),
]
ARRAYS: list[tuple[str, list[Any], str]] = [
    ("t.ints", [1, -2, 3], "INT32"),
    ("t.u8s", [0, 255, 7], "UINT8"),
    ("t.u64s", [2**64 - 1, 0], "UINT64"),
    ("t.f32s", [0.5, -1.25], "FLOAT32"),
    ("t.f64s", [0.1, 1e300], "FLOAT64"),
    ("t.bools", [True, False, True], "BOOL"),
    ("t.strings", ["a", "héllo", "", "z" * 300], "STRING"),
]


def write_every_type(path: Path, *, big_endian: bool = False, alignment: int | None = None) -> Path:
    import gguf

    endianess = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(path, "llama", endianess=endianess)
    try:
        if alignment is not None:
            writer.add_custom_alignment(alignment)
        for key, method, value in SCALARS:
            getattr(writer, method)(key, value)
        for key, values, sub_type in ARRAYS:
            writer.add_key_value(key, values, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType[sub_type])
        writer.add_array("t.nested", [[1, 2], [3]])
        writer.add_tensor("w.f32", np.arange(8, dtype=np.float32).reshape(2, 4))
        writer.add_tensor("w.f16", np.arange(64, dtype=np.float16).reshape(2, 32))
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor("w.q8", gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32), q8), raw_dtype=q8)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def plain(data: bytes, value: Any) -> Any:
    """A parsed value as Python, decoded the simplest way (what the parser's views stand for)."""
    if isinstance(value, StringRef):
        return data[value.start : value.start + value.length].decode()
    if isinstance(value, StringArray):
        return [data[s : s + n].decode() for s, n in zip(value.starts.tolist(), value.lengths.tolist(), strict=True)]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(data, v) for v in value]
    return value


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_every_value_type_reads_as_gguf_py_reads_it(tmp_path: Path, big_endian: bool) -> None:
    from gguf import GGUFReader

    path = write_every_type(tmp_path / "all.gguf", big_endian=big_endian)
    data = path.read_bytes()
    header = read_header(data)
    reference = GGUFReader(path)
    assert header.byte_order == (">" if big_endian else "<")
    assert header.version == 3
    expected_keys = [k for k in reference.fields if not k.startswith("GGUF.")]
    assert list(header.fields) == expected_keys  # in the file's order
    for key in expected_keys:
        field = header.fields[key]
        assert field.types == tuple(reference.fields[key].types), key
        if key == "t.nested":  # gguf-py flattens arrays of arrays; the parser keeps them
            assert plain(data, field.value) == [[1, 2], [3]]
            assert field.types == (ValueType.ARRAY, ValueType.ARRAY, ValueType.INT32)
            continue
        assert plain(data, field.value) == reference.fields[key].contents(), key
    assert {t.name: (t.offset, t.type_id) for t in header.tensors.values()} == {
        t.name: (t.data_offset, int(t.tensor_type)) for t in reference.tensors
    }
    assert {t.name: t.ne for t in header.tensors.values()} == {
        t.name: tuple(int(d) for d in t.shape) for t in reference.tensors
    }
    assert header.data_offset == reference.data_offset


def test_scalars_are_python_values_of_the_stored_precision(tmp_path: Path) -> None:
    header = read_header(write_every_type(tmp_path / "all.gguf").read_bytes())
    values = {key: header.fields[key].value for key, _, _ in SCALARS if key != "t.str"}
    assert values["t.f32"] == float(np.float32(0.1)) and values["t.f64"] == 0.1
    assert values["t.bool"] is True
    assert values["t.u64"] == 2**63 + 5 and values["t.i64"] == -(2**62)
    assert all(type(v) in (int, float, bool) for v in values.values())


def test_a_custom_alignment_places_the_data(tmp_path: Path) -> None:
    from gguf import GGUFReader

    path = write_every_type(tmp_path / "aligned.gguf", alignment=256)
    header = read_header(path.read_bytes())
    assert header.alignment == 256 and header.data_offset % 256 == 0
    assert header.data_offset == GGUFReader(path).data_offset


def test_version_2_has_the_same_layout_and_reads() -> None:
    data = bytearray(gb.small_model())
    data[4:8] = struct.pack("<I", 2)
    header = read_header(bytes(data))
    assert header.version == 2 and list(header.tensors) == ["a.weight", "b.weight"]


def test_empty_arrays_keep_their_element_type() -> None:
    # gguf-py's writer refuses empty arrays; other writers do not, and the type is in the file.
    empty_strings = gb.key_value("s", gb.ARRAY, struct.pack("<IQ", gb.STRING, 0))
    empty_floats = gb.key_value("f", gb.ARRAY, struct.pack("<IQ", gb.FLOAT32, 0))
    data = gb.gguf([empty_strings, empty_floats])
    fields = read_header(data).fields
    assert fields["s"].types == (ValueType.ARRAY, ValueType.STRING) and plain(data, fields["s"].value) == []
    assert fields["f"].types == (ValueType.ARRAY, ValueType.FLOAT32) and plain(data, fields["f"].value) == []


def test_the_hand_packed_file_reads_in_both_byte_orders() -> None:
    for order in "<>":
        data = gb.small_model(order=order)
        header = read_header(data)
        assert header.byte_order == order
        assert plain(data, header.fields["test.strings"].value) == ["a", "héllo", ""]
        assert plain(data, header.fields["test.floats"].value) == [0.5, -1.25, 3.0]
        assert header.tensors["b.weight"].offset == header.data_offset + 32
        assert header.tensors["a.weight"].ne == (4, 2)


HUGE = 2**63 - 1
ARCH = gb.string_key("general.architecture", "llama")

# (id, file bytes, what the message says): each a header that a writer would not produce.
MALFORMED: list[tuple[str, bytes, str]] = [
    ("empty", b"", "does not start with 'GGUF'"),
    ("not-gguf", b"this is not a model at all" * 10, "does not start with 'GGUF'"),
    ("magic-only", b"GGUF\x03\x00", "shorter than a GGUF header"),
    ("version-1", gb.gguf([ARCH], version=1), "GGUF version 1; versions 2 and 3 are read here"),
    ("version-huge", gb.gguf([ARCH], version=0xFFFFFFFF), "GGUF version 4294967295"),
    ("huge-key-count", gb.gguf([ARCH], n_keys=HUGE), f"claims {HUGE} metadata keys"),
    ("huge-tensor-count", gb.gguf([ARCH], n_tensors=2**40), f"claims {2**40} tensors"),
    (
        "key-count-past-the-end",
        gb.gguf([ARCH], n_keys=2, alignment=1),
        "the name of metadata key #1 at byte 69 needs 8 bytes, but the file ends at byte 69",
    ),
    ("huge-key-length", gb.gguf([gb.string("k", length=HUGE) + b"\x04\0\0\0\0\0\0\0"]), f"needs {HUGE} bytes"),
    (
        "huge-string-length",
        gb.gguf([gb.key_value("k", gb.STRING, gb.string("v", length=2**64 - 1))]),
        f"the metadata key k at byte 45 needs {2**64 - 1} bytes, but the file ends at byte 64 (truncated download?)",
    ),
    (
        "huge-array-count",
        gb.gguf([gb.key_value("k", gb.ARRAY, struct.pack("<IQ", gb.FLOAT32, 2**62) + b"\0" * 8)]),
        f"the metadata key k claims {2**62} elements of 4 bytes, past the end of the file",
    ),
    (
        "huge-string-array-count",
        gb.gguf([gb.key_value("tokens", gb.ARRAY, struct.pack("<IQ", gb.STRING, 2**62))]),
        f"the metadata key tokens claims {2**62} strings, more than the rest of the file can hold",
    ),
    (
        "huge-string-in-an-array",
        gb.gguf(
            [gb.key_value("tokens", gb.ARRAY, struct.pack("<IQ", gb.STRING, 2) + gb.string("a", length=HUGE))],
            data=b"\0" * 64,
        ),
        "the metadata key tokens (an array of 2 strings) runs past the end of the file",
    ),
    (
        "huge-last-string-in-an-array",
        gb.gguf(
            [
                gb.key_value(
                    "tokens",
                    gb.ARRAY,
                    struct.pack("<IQ", gb.STRING, 2) + gb.string("a") + gb.string("b", length=2**64 - 1),
                )
            ]
        ),
        "the metadata key tokens (an array of 2 strings) runs past the end of the file",
    ),
    (
        "huge-count-of-arrays",
        gb.gguf([gb.key_value("k", gb.ARRAY, struct.pack("<IQ", gb.ARRAY, 2**60))]),
        f"the metadata key k claims {2**60} arrays",
    ),
    (
        "arrays-nested-too-deep",
        gb.gguf([gb.key_value("k", gb.ARRAY, struct.pack("<IQ", gb.ARRAY, 1) * 6 + struct.pack("<IQ", gb.UINT32, 0))]),
        "the metadata key k nests arrays deeper than 4 levels",
    ),
    ("unknown-value-type", gb.gguf([gb.key_value("k", 13, b"\0" * 8)]), "the metadata key k has value type 13"),
    (
        "unknown-element-type",
        gb.gguf([gb.key_value("k", gb.ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 8)]),
        "the metadata key k has value type 99, which GGUF does not define",
    ),
    (
        "non-utf8-key",
        gb.gguf([gb.uint32_key("ok", 1), gb.key_value(b"\xff\xfe", gb.UINT32, b"\0" * 4)]),
        "the name of metadata key #1 at byte",
    ),
    (
        "duplicate-key",
        gb.gguf([ARCH, gb.uint32_key("n", 1), gb.uint32_key("n", 2)]),
        "the metadata key n appears twice",
    ),
    (
        "duplicate-tensor",
        gb.gguf([ARCH], [gb.tensor_entry("w", (4,), 0, 0), gb.tensor_entry("w", (4,), 0, 32)], data=b"\0" * 64),
        "the tensor name w appears twice",
    ),
    (
        "1000-dimensions",
        gb.gguf([ARCH], [gb.tensor_entry("w", (1,) * 1000, 0, 0)], data=b"\0" * 32),
        "the tensor w has 1000 dimensions; GGUF allows at most 4",
    ),
    (
        "huge-dimension-count",
        gb.gguf([ARCH], [gb.string("w") + struct.pack("<I", 0xFFFFFFFF)]),
        "the tensor w has 4294967295 dimensions",
    ),
    (
        "too-many-elements",
        gb.gguf([ARCH], [gb.tensor_entry("w", (2**32, 2**32), 0, 0)]),
        "the tensor w has dimensions [4294967296, 4294967296], more elements than ggml can count",
    ),
    (
        "non-utf8-tensor-name",
        gb.gguf([ARCH], [gb.tensor_entry("w", (4,), 0, 0)]).replace(b"\x01\0\0\0\0\0\0\0w", b"\x01\0\0\0\0\0\0\0\xff"),
        "the name of tensor #0",
    ),
    ("alignment-zero", gb.gguf([gb.uint32_key("general.alignment", 0)]), "general.alignment is 0, not a power of two"),
    ("alignment-three", gb.gguf([gb.uint32_key("general.alignment", 3)]), "general.alignment is 3, not a power of two"),
    (
        "alignment-not-uint32",
        gb.gguf([gb.key_value("general.alignment", gb.UINT64, struct.pack("<Q", 64))]),
        "general.alignment should be a uint32, found a uint64",
    ),
]


@pytest.mark.parametrize(("data", "fragment"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_header_is_a_value_error_saying_what_and_where(data: bytes, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        read_header(data)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_truncation_of_a_header_is_a_value_error() -> None:
    data = gb.small_model()
    whole = read_header(data)
    outcomes = []
    for size in range(whole.data_offset + 1):
        try:
            cut = read_header(data[:size])
        except ValueError as exc:
            assert any(
                words in str(exc) for words in ("file ends", "past the end", "shorter than", "start", "claims")
            ), exc
            outcomes.append(False)
        else:
            outcomes.append(
                (list(cut.fields), cut.tensors, cut.data_offset)
                == (list(whole.fields), whole.tensors, whole.data_offset)
            )
    # Every cut inside the tensor directory is refused; the padding after it is not needed.
    first_whole = outcomes.index(True)
    assert not any(outcomes[:first_whole]) and all(outcomes[first_whole:])
    assert whole.data_offset - 32 < first_whole <= whole.data_offset


def test_corrupted_headers_parse_or_are_value_errors_never_anything_else() -> None:
    data = gb.small_model()
    header_end = read_header(data).data_offset
    rng = random.Random(7)
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(2000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(4, header_end)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        try:
            parsed = read_header(bytes(damaged))
        except ValueError:
            outcomes["refused"] += 1
        else:
            assert isinstance(parsed, GGUFHeader)
            outcomes["parsed"] += 1
    assert outcomes["parsed"] and outcomes["refused"]  # both kinds of damage occurred
