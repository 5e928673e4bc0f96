"""The float copy with a stand-in for the backend's quantiser (the real one: tests/integration)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput, PermissionDenied, UnclassifiedError
from bitnet_crossval.reference import dequantize
from bitnet_crossval.reference.dequantize import (
    BackendIdentity,
    backend_identity,
    float_copy,
    quantized_tensors,
    to_float_type,
)
from bitnet_crossval.reference.gguf_container import read_layout
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util import i2s
from tests.unit.reference.conftest import ModelMaker
from tests.unit.reference.fake_dequantizer import COMMIT, FakeDequantizer

GB = 10**9


@pytest.fixture
def cache(tmp_path: Path) -> CacheLayout:
    return CacheLayout(tmp_path / "cache")


def _tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every tensor of a file gguf-py reads: its type and raw bytes."""
    import gguf

    return {t.name: (t.tensor_type.name, np.asarray(t.data).copy()) for t in gguf.GGUFReader(path).tensors}


def _dequantized(path: Path) -> dict[str, np.ndarray]:
    import gguf
    from gguf.quants import dequantize as gguf_dequantize

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        out[t.name] = np.asarray(gguf_dequantize(np.asarray(t.data), t.tensor_type), dtype=np.float32).reshape(shape)
    return out


def test_the_copy_keeps_metadata_and_plain_tensors_and_dequantises_the_rest(
    synthetic: ModelMaker, cache: CacheLayout
) -> None:
    model = synthetic("llama", "Q8_0")
    backend = FakeDequantizer()
    result = float_copy(model, backend, cache=cache, threads=1)

    assert result.path.parent == cache.float_copies and result.path.is_file()
    assert result.path.name.endswith("-llama-0c1e57098bba-f32.gguf")
    assert (result.float_type, result.cached, result.reason) == ("F32", False, "F32, the default")
    assert result.size_bytes == result.path.stat().st_size
    assert (result.backend, result.backend_commit, result.source) == ("llama", COMMIT, model.absolute())
    quantized = quantized_tensors(model)
    assert result.by_backend == len(quantized) > 0 and result.by_decoder == 0
    # the backend saw only the quantised tensors, and was allowed to requantise
    (call,) = backend.calls
    assert call["allow_requantize"] and call["type"] == "F32"
    assert call["tensors"] == list(quantized) and call["input_types"] == ["Q8_0"]

    source, copy = read_layout(model), read_layout(result.path)
    assert copy.kv_bytes() == source.kv_bytes()  # the metadata, vocabulary included, byte for byte
    assert [(t.name, t.ne) for t in copy.tensors] == [(t.name, t.ne) for t in source.tensors]
    before, after, floats = _tensors(model), _tensors(result.path), _dequantized(model)
    for name, (type_name, raw) in before.items():
        if name in quantized:
            assert after[name][0] == "F32"
            assert np.array_equal(after[name][1], floats[name])
        else:
            assert after[name][0] == type_name
            assert after[name][1].tobytes() == raw.tobytes()
    note = json.loads(cache.float_copy_note(result.path).read_text())
    assert note["source_sha256"] == result.source_sha256 and note["size_bytes"] == result.size_bytes
    assert not [p for p in cache.float_copies.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_second_request_is_served_from_the_cache(synthetic: ModelMaker, cache: CacheLayout) -> None:
    model = synthetic("llama", "Q4_0")
    backend = FakeDequantizer()
    first = float_copy(model, backend, cache=cache, threads=1)
    second = float_copy(model, backend, cache=cache)
    assert len(backend.calls) == 1
    assert second.cached and not first.cached
    assert (second.path, second.size_bytes, second.float_type) == (first.path, first.size_bytes, "F32")
    # a copy whose note no longer matches the file is not trusted: it is written again
    note_path = cache.float_copy_note(first.path)
    note = json.loads(note_path.read_text())
    note_path.write_text(json.dumps({**note, "size_bytes": 1}))
    third = float_copy(model, backend, cache=cache, threads=1)
    assert not third.cached and len(backend.calls) == 2


def test_f16_and_bf16_copies_round_as_ggml_does(synthetic: ModelMaker, cache: CacheLayout) -> None:
    model = synthetic("gemma3", "Q4_0")
    floats = _dequantized(model)
    quantized = set(quantized_tensors(model))
    for float_type in ("F16", "BF16"):
        result = float_copy(model, FakeDequantizer(), cache=cache, float_type=float_type, threads=1)
        assert (result.float_type, result.reason) == (float_type, f"{float_type}, as asked")
        assert result.path.name.endswith(f"-{float_type.lower()}.gguf")
        copied = _tensors(result.path)
        for name in quantized:
            type_name, raw = copied[name]
            assert type_name == float_type
            expected = to_float_type(floats[name], float_type)
            assert raw.tobytes() == expected.tobytes()


def test_bf16_rounding_is_to_nearest_even_with_quiet_nans() -> None:
    values = np.array(
        [1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, -2.5, np.inf, 3.0e38],
        dtype=np.float32,
    )
    bits = to_float_type(values, "BF16")
    assert bits.dtype == np.uint16
    # 1 + 2^-8 is halfway between two BF16 values: to the even one (1.0); 1 + 3*2^-8 rounds up
    assert [hex(b) for b in bits] == ["0x3f80", "0x3f80", "0x3f82", "0x3f81", "0xc020", "0x7f80", "0x7f62"]
    signalling_nan = np.array([0x7F800001], dtype=np.uint32).view(np.float32)
    assert to_float_type(signalling_nan, "BF16")[0] == 0x7FC0
    assert to_float_type(values, "F16").dtype == np.float16
    assert to_float_type(values, "F32") is values


def test_auto_takes_f16_when_f32_does_not_fit(
    synthetic: ModelMaker, cache: CacheLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = synthetic("llama", "Q8_0")
    f32_peak = dequantize._sizes(dequantize._plan(model, BackendIdentity(name="llama", commit=COMMIT)), "F32").peak
    # F32 misses by one byte (its margin included); F16 fits
    monkeypatch.setattr(dequantize, "_free_bytes", lambda _: f32_peak + dequantize.DISK_MARGIN_BYTES - 1)
    result = float_copy(model, FakeDequantizer(), cache=cache, threads=1)
    assert result.float_type == "F16"
    assert result.reason.startswith("F16, because F32 does not fit: it needs ")
    assert str(cache.float_copies) in result.reason


def test_too_little_space_is_refused_before_anything_is_written(
    synthetic: ModelMaker, cache: CacheLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = synthetic("llama", "Q8_0")
    backend = FakeDequantizer()
    monkeypatch.setattr(dequantize, "_free_bytes", lambda _: 1000)
    with pytest.raises(PermissionDenied) as auto:
        float_copy(model, backend, cache=cache)
    assert auto.value.exit_code == 4
    assert "not enough free space" in auto.value.message and "for the F32 copy of llama-Q8_0.gguf" in auto.value.message
    assert "an F16 copy needs" in auto.value.message and "1.0 kB" not in auto.value.message
    assert "BITNET_CACHE_DIR" in auto.value.next_step
    with pytest.raises(PermissionDenied) as asked:
        float_copy(model, backend, cache=cache, float_type="F32")
    assert "ask for an F16 copy" in asked.value.next_step
    assert backend.calls == []
    assert list(cache.float_copies.iterdir()) == []


def test_what_cannot_be_copied_is_bad_input(synthetic: ModelMaker, cache: CacheLayout, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="has no quantised tensors"):
        float_copy(synthetic("llama", "F32"), FakeDequantizer(), cache=cache)
    with pytest.raises(BadInput, match="not a float type"):
        float_copy(synthetic("llama", "Q8_0"), FakeDequantizer(), cache=cache, float_type="Q8_0")  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="does not exist"):
        float_copy(tmp_path / "missing.gguf", FakeDequantizer(), cache=cache)
    split = _with_extra_key(synthetic("llama", "Q8_0"), tmp_path / "part.gguf", "split.count", 3)
    with pytest.raises(BadInput, match="split into 3 files") as caught:
        float_copy(split, FakeDequantizer(), cache=cache)
    assert "llama-gguf-split --merge" in caught.value.next_step


def _with_extra_key(source: Path, dest: Path, key: str, value: int) -> Path:
    """``source`` with one more uint16 key (appended to the key-value section)."""
    import struct

    layout = read_layout(source)
    raw = source.read_bytes()
    encoded = key.encode()
    extra = struct.pack("<Q", len(encoded)) + encoded + struct.pack("<IH", 2, value)
    start, end = layout.kv_span
    header = raw[:16] + struct.pack("<Q", layout.n_kv + 1)
    directory_size = sum(8 + len(t.name.encode()) + 4 + 8 * len(t.ne) + 4 + 8 for t in layout.tensors)
    directory = raw[end : end + directory_size]  # offsets are relative to the data: they survive
    body = raw[layout.data_start :]
    head = header + raw[start:end] + extra + directory
    # the directory's end moved: pad to the same alignment before the data
    pad = -len(head) % layout.alignment
    dest.write_bytes(head + bytes(pad) + body)
    return dest


def test_i2s_is_decoded_here_into_what_bitnet_cpp_multiplies(synthetic: ModelMaker, cache: CacheLayout) -> None:
    model = synthetic("bitnet-b1.58", "I2_S")
    backend = FakeDequantizer(name="bitnet")
    result = float_copy(model, backend, cache=cache)
    assert backend.calls == []  # nothing else is quantised: the backend is not asked
    layout = read_layout(model)
    i2s_tensors = [t for t in layout.tensors if t.type_id == 36]
    assert result.by_decoder == len(i2s_tensors) > 0 and result.by_backend == 0
    copied = _tensors(result.path)
    raw = model.read_bytes()
    for t in i2s_tensors:
        packed = np.frombuffer(raw[t.offset : t.offset + i2s.tensor_nbytes(t.n_elements)], dtype=np.uint8)
        expected = i2s.decode(packed, t.n_elements)
        type_name, data = copied[t.name]
        assert type_name == "F32"
        assert data.tobytes() == expected.tobytes()
        assert set(np.unique(np.abs(expected))) <= {0.0, float(np.abs(expected).max())}  # ternary times one scale


def test_i2s_needs_bitnet_and_never_holds_code_3(synthetic: ModelMaker, cache: CacheLayout, tmp_path: Path) -> None:
    model = synthetic("bitnet-b1.58", "I2_S")
    with pytest.raises(BadInput, match=r"only bitnet\.cpp reads") as caught:
        float_copy(model, FakeDequantizer(name="llama"), cache=cache)
    assert "--backend bitnet" in caught.value.next_step
    layout = read_layout(model)
    target = next(t for t in layout.tensors if t.type_id == 36)
    raw = bytearray(model.read_bytes())
    raw[target.offset + 5] = 0b11_01_00_10  # one field holds the code 3
    broken = tmp_path / "code3.gguf"
    broken.write_bytes(bytes(raw))
    with pytest.raises(BadInput, match="holds the 2-bit code 3"):
        float_copy(broken, FakeDequantizer(name="bitnet"), cache=cache)
    assert not [p for p in cache.float_copies.iterdir() if p.suffix == ".gguf" or p.name.startswith(".")]


def test_tl2_cannot_be_copied_on_bitnet(tmp_path: Path, cache: CacheLayout) -> None:
    import gguf

    path = tmp_path / "tl2.gguf"
    writer = gguf.GGUFWriter(path, "bitnet")
    # 39 is MXFP4 to gguf-py and TL2 in bitnet.cpp; 4 rows of 64 values, 2 blocks of 17 bytes each
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 34), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType(39))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BadInput, match="holds TL2 tensors") as caught:
        float_copy(path, FakeDequantizer(name="bitnet"), cache=cache)
    assert "no dequantiser" in caught.value.message


def test_a_backend_that_leaves_a_tensor_quantised_keeps_nothing(synthetic: ModelMaker, cache: CacheLayout) -> None:
    model = synthetic("llama", "Q8_0")
    backend = FakeDequantizer(leave_quantized=frozenset({"blk.1.ffn_up.weight"}))
    with pytest.raises(UnclassifiedError, match=r"did not dequantise blk\.1\.ffn_up\.weight .* it wrote type 8"):
        float_copy(model, backend, cache=cache, threads=1)
    assert list(cache.float_copies.iterdir()) == []


def test_leftovers_of_a_killed_writer_are_removed(synthetic: ModelMaker, cache: CacheLayout) -> None:
    model = synthetic("llama", "Q4_0")
    ident = BackendIdentity(name="llama", commit=COMMIT)
    sha = dequantize._sha256(model)
    target = cache.float_copy(sha, ident.name, ident.commit, "F32")
    target.parent.mkdir(parents=True)
    stale_temp = cache.float_copy_temp(target, 999_999)
    stale_temp.write_bytes(b"GGUF half")
    stale_work = cache.float_copy_workdir(cache.float_copy(sha, ident.name, ident.commit, "F16"), 999_998)
    (stale_work / "dequantized.gguf").parent.mkdir()
    (stale_work / "dequantized.gguf").write_bytes(b"GGUF")
    result = float_copy(model, FakeDequantizer(), cache=cache, identity=ident, model_sha256=sha, threads=1)
    assert not stale_temp.exists() and not stale_work.exists()
    assert sorted(p.name for p in cache.float_copies.iterdir()) == sorted(
        [result.path.name, cache.float_copy_note(result.path).name]
    )


def test_a_progress_line_while_the_backend_works(
    synthetic: ModelMaker, cache: CacheLayout, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BITNET_PROGRESS_INTERVAL", "0.05")
    float_copy(synthetic("llama", "Q5_0"), FakeDequantizer(delay=0.4), cache=cache, threads=1)
    err = capsys.readouterr().err
    assert "writing the F32 copy of llama-Q5_0.gguf ..." in err
    assert "dequantising 23 tensors with the backend ..." in err
    assert "still running" in err


def test_the_backend_identity_is_its_commit_or_else_its_libraries(tmp_path: Path) -> None:
    assert backend_identity({"backend": "llama", "backend_commit": COMMIT.upper()}) == BackendIdentity(
        name="llama", commit=COMMIT
    )
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libllama.so").write_bytes(b"one")
    (lib / "libggml.so").write_bytes(b"two")
    (lib / "libggml.so.0").symlink_to("libggml.so")
    first = backend_identity({"backend": "bitnet", "backend_commit": "unknown", "lib_dir": str(lib)})
    assert first.name == "bitnet" and first.commit.startswith("libs-")
    (lib / "libllama.so").write_bytes(b"rebuilt")
    second = backend_identity({"backend": "bitnet", "backend_commit": "unknown", "lib_dir": str(lib)})
    assert second.commit != first.commit
    with pytest.raises(BadInput, match="does not record its commit"):
        backend_identity({"backend": "bitnet", "backend_commit": "unknown", "lib_dir": str(tmp_path / "none")})


def test_the_cache_key_holds_model_backend_commit_and_type(cache: CacheLayout) -> None:
    sha = "ab" * 32
    f32 = cache.float_copy(sha, "llama", COMMIT, "F32")
    assert f32 == cache.root / "float-copies" / f"{sha[:16]}-llama-0c1e57098bba-f32.gguf"
    assert cache.float_copy(sha, "llama", COMMIT, "F16") != f32
    assert cache.float_copy(sha, "bitnet", COMMIT, "F32") != f32
    assert cache.float_copy(sha, "llama", "1" * 40, "F32") != f32
    assert cache.float_copy("cd" * 32, "llama", COMMIT, "F32") != f32
    odd = cache.float_copy(sha, "bitnet", "libs-1b88cc83b85e", "F32").name
    assert "/" not in odd and odd.endswith("-f32.gguf")
    assert cache.float_copy_lock(sha, "llama", COMMIT) == cache.float_copy_lock(sha, "llama", COMMIT)
    assert cache.float_copy_note(f32).name == f32.name + ".json"
    assert cache.float_copy_temp(f32, os.getpid()).parent == f32.parent
