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


def test_a_tied_tensor_is_stored_under_the_name_transformers_loads_it_by(tmp_path: Path) -> None:
    from safetensors import safe_open

    entry = entry_for(CacheLayout(tmp_path), model_sha256="c" * 64, transformers_version="5.0.0")
    model, config = tiny()
    write_entry(entry, model=model, raw_config=config, record={})
    with safe_open(str(entry.path / "model.safetensors"), "pt") as stored:
        names = set(stored.keys())
    # Stored as lm_head.weight, the embedding was initialised at random on every load, then tied.
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    initialised: list[str] = []
    original = transformers.PreTrainedModel._init_weights

    def spy(self: Any, module: Any) -> None:
        weight = getattr(module, "weight", None)
        if weight is not None and not getattr(weight, "_is_hf_initialized", False):
            initialised.append(type(module).__name__)
        original(self, module)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.PreTrainedModel, "_init_weights", spy)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(str(entry.path))
    assert "Embedding" not in initialised
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_an_entry_of_the_older_format_is_written_again(tmp_path: Path) -> None:
    import json

    entry = entry_for(CacheLayout(tmp_path), model_sha256="d" * 64, transformers_version="5.0.0")
    model, config = tiny()
    write_entry(entry, model=model, raw_config=config, record={"model_sha256": "d" * 64})
    record_path = entry.path / "crossval-hf.json"
    older = {k: v for k, v in json.loads(record_path.read_text()).items() if k != "format"}
    record_path.write_text(json.dumps(older))
    assert not entry.is_complete()
    write_entry(entry, model=model, raw_config=config, record={"model_sha256": "d" * 64})
    assert entry.is_complete() and read_record(entry)["format"] == 2
