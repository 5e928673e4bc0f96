"""The synthetic model kept in the cache: written once, checked against the record of what was
written, and written again when it is damaged (truncated, overwritten) or was never recorded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bitnet_crossval.crossval import synthetic
from bitnet_crossval.crossval.models import VOCABULARY_FILE, Quantizer, parse_model, synthetic_model
from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.files import file_sha256


class Writes:
    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def cache(tmp_path: Path, tiny_vocab: Path) -> CacheLayout:
    layout = CacheLayout(tmp_path / "cache")
    target = layout.sources / "vocab" / "models" / VOCABULARY_FILE
    target.parent.mkdir(parents=True)
    shutil.copyfile(tiny_vocab, target)
    return layout


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Writes:
    counter = Writes()
    real = synthetic.write_synthetic_model

    def counting(*args: object, **kwargs: object) -> Path:
        counter.count += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "write_synthetic_model", counting)
    return counter


def resolve(cache: CacheLayout) -> Path:
    return synthetic_model(parse_model("synthetic:llama"), cache=cache, source_dirs=[])


def test_the_model_is_written_once_with_its_record(cache: CacheLayout, writes: Writes) -> None:
    path = resolve(cache)
    record = json.loads(cache.model_record(path.name).read_text())
    assert record == {"size": path.stat().st_size, "sha256": file_sha256(path), "mtime_ns": path.stat().st_mtime_ns}
    assert resolve(cache) == path
    assert writes.count == 1


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garbage_same_size(path: Path) -> None:
    size = path.stat().st_size
    path.write_bytes(b"GGUF" + os.urandom(size - 4))


def _no_record(path: Path) -> None:
    (path.parent / f"{path.name}.written.json").unlink()


def _garbage_record(path: Path) -> None:
    (path.parent / f"{path.name}.written.json").write_text("[")


@pytest.mark.parametrize(
    "damage", [_truncate, _garbage_same_size, _no_record, _garbage_record], ids=lambda f: f.__name__.strip("_")
)
def test_a_damaged_or_unrecorded_model_is_written_again(
    cache: CacheLayout, writes: Writes, damage: object, capfd: pytest.CaptureFixture[str]
) -> None:
    path = resolve(cache)
    sha = file_sha256(path)
    damage(path)  # type: ignore[operator]
    capfd.readouterr()
    assert resolve(cache) == path
    assert writes.count == 2
    assert file_sha256(path) == sha
    assert f"the cached synthetic model {path} is damaged" in capfd.readouterr().err
    assert resolve(cache) == path and writes.count == 2  # and then it is trusted again


def test_a_model_only_touched_is_hashed_and_kept(cache: CacheLayout, writes: Writes) -> None:
    path = resolve(cache)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000))
    assert resolve(cache) == path
    assert writes.count == 1


class FakeQuantizer:
    """llama.cpp's quantiser stood in for: the output is the F32 model with a marker appended."""

    def __init__(self, identity: str = "shim-a") -> None:
        self.calls: list[tuple[Path, str]] = []
        self.identity = identity

    def quantizer(self) -> Quantizer:
        def quantize(model: Path, out: Path, tensor_type: str) -> None:
            self.calls.append((model, tensor_type))
            out.write_bytes(model.read_bytes() + tensor_type.encode())

        return Quantizer(identity=self.identity, quantize=quantize)


def test_a_k_quant_is_the_quantisers_output_from_the_f32_model_cached_by_its_identity(cache: CacheLayout) -> None:
    fake = FakeQuantizer()
    choice = parse_model("synthetic:llama:Q4_K")
    path = synthetic_model(choice, cache=cache, source_dirs=[], quantizer=fake.quantizer())
    f32 = resolve(cache)
    assert fake.calls == [(f32, "Q4_K_M")]
    assert path.read_bytes() == f32.read_bytes() + b"Q4_K_M"
    assert synthetic_model(choice, cache=cache, source_dirs=[], quantizer=fake.quantizer()) == path
    assert len(fake.calls) == 1  # cached
    other = FakeQuantizer("shim-b")
    assert synthetic_model(choice, cache=cache, source_dirs=[], quantizer=other.quantizer()) != path
    assert other.calls == [(f32, "Q4_K_M")]  # another quantiser's model is made again


def test_a_k_quant_without_a_quantiser_is_bad_input(cache: CacheLayout) -> None:
    with pytest.raises(BadInput, match="made by llama\\.cpp's quantiser"):
        synthetic_model(parse_model("synthetic:gemma3:Q6_K"), cache=cache, source_dirs=[])
