"""The hf candidate's cache entries: whole or absent, leftovers of killed writers removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

from bitnet_crossval.crossval.hf.weights_cache import entry_for, read_record, write_entry  # noqa: E402
from bitnet_crossval.store.layout import CacheLayout  # noqa: E402


def tiny() -> tuple[Any, Any]:
    config = transformers.LlamaConfig(
        vocab_size=16, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config), config


def test_an_entry_is_written_whole_and_read_back(tmp_path: Path) -> None:
    entry = entry_for(CacheLayout(tmp_path), model_sha256="a" * 64, transformers_version="5.0.0")
    killed = entry.path.with_name(f".staging-{entry.path.name}-999999")
    killed.mkdir(parents=True)
    (killed / "model.safetensors").write_bytes(b"half")
    model, config = tiny()
    write_entry(entry, model=model, raw_config=config, record={"model_sha256": "a" * 64})
    assert entry.is_complete() and not killed.exists() and not entry.staging.exists()
    assert read_record(entry)["model_sha256"] == "a" * 64
    assert (entry.path / "model.safetensors").stat().st_mode & 0o777 == 0o644
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(entry.path))
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    entry = entry_for(CacheLayout(tmp_path), model_sha256="b" * 64, transformers_version="5.0.0")
    model, config = tiny()

    class Broken:
        def to_json_file(self, path: str) -> None:
            Path(path).write_text("{")
            raise OSError(28, "No space left on device")

    with pytest.raises(Exception, match="No space left"):
        write_entry(entry, model=model, raw_config=Broken(), record={})
    assert not entry.path.exists() and not entry.staging.exists()
    write_entry(entry, model=model, raw_config=config, record={})
    assert entry.is_complete()
