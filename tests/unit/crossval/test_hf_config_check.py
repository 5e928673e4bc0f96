"""What transformers reads from a GGUF and what it takes from defaults, on synthetic models.

transformers builds the configuration from the file itself here (its GGUF reader on a tiny
vocabulary is quick); the check must find exactly the settings it gets wrong and set them to
what llama.cpp reads from the same file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

pytestmark = pytest.mark.hf

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile  # noqa: E402
from bitnet_crossval.crossval.engine.hparams import read_hparams  # noqa: E402
from bitnet_crossval.crossval.hf.config_check import check, expectations  # noqa: E402
from tests.unit.crossval.conftest import ModelFactory  # noqa: E402


def hf_config(path: Path) -> Any:
    return transformers.AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def findings_for(path: Path, *, correct: bool = True) -> tuple[Any, Any, list[Any]]:
    file = GGUFModelFile(path)
    config = hf_config(path)
    before = copy.deepcopy(config)
    return before, config, check(config, expectations(read_hparams(file), file), correct=correct)


def test_gemma3_gets_the_q_scale_and_the_window_pattern_from_the_file(model_factory: ModelFactory) -> None:
    # head size 128 (transformers' default scalar is 256), pattern 3 (its default is 6)
    path = model_factory("gemma3")
    before, config, findings = findings_for(path)
    assert {f.setting: f.action for f in findings} == {"query_pre_attn_scalar": "corrected", "layer_types": "corrected"}
    assert before.query_pre_attn_scalar == 256 and config.query_pre_attn_scalar == 128
    assert config.layer_types == ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
    assert before.layer_types == ["sliding_attention"] * 4
    scalar = next(f for f in findings if f.setting == "query_pre_attn_scalar")
    assert scalar.sentence() == (
        "transformers' config had query_pre_attn_scalar 256; set to 128 from gemma3.attention.key_length "
        "(llama.cpp scales Q by 1/sqrt(key_length))"
    )
    file = GGUFModelFile(path)
    assert check(config, expectations(read_hparams(file), file), correct=True) == []  # nothing left to correct


def test_gemma3_keys_transformers_never_reads(model_factory: ModelFactory) -> None:
    path = model_factory(
        "gemma3", rope_base_swa=20000.0, final_logit_softcap=30.0, swa_pattern=(True, False, True, False)
    )
    _before, config, findings = findings_for(path)
    corrected = {f.setting for f in findings if f.action == "corrected"}
    assert {
        "rope_parameters.sliding_attention.rope_theta",
        "final_logit_softcapping",
        "layer_types",
    } <= corrected
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 20000.0
    assert config.final_logit_softcapping == pytest.approx(30.0)
    assert config.layer_types == ["sliding_attention", "full_attention"] * 2


def test_gemma3_without_a_window_is_global_in_every_layer(model_factory: ModelFactory) -> None:
    _before, config, findings = findings_for(model_factory("gemma3", sliding_window=0))
    layer_types = next(f for f in findings if f.setting == "layer_types")
    assert layer_types.source == "the absence of gemma3.attention.sliding_window (llama.cpp: no sliding window)"
    assert config.layer_types == ["full_attention"] * 4


def test_llama_is_read_whole(model_factory: ModelFactory) -> None:
    assert findings_for(model_factory("llama"))[2] == []


def test_llama_biases_switch_transformers_bias_settings_on(model_factory: ModelFactory) -> None:
    _before, config, findings = findings_for(model_factory("llama", attention_bias=True, ffn_bias=True))
    assert {f.setting: f.action for f in findings} == {"attention_bias": "corrected", "mlp_bias": "corrected"}
    assert config.attention_bias is True and config.mlp_bias is True


def test_what_transformers_cannot_express_is_refused(model_factory: ModelFactory) -> None:
    _before, _config, findings = findings_for(model_factory("llama", rope_freqs=True))
    refused = [f for f in findings if f.action == "refused"]
    assert [f.setting for f in refused] == ["rope_parameters.rope_type"]
    assert "cannot take 'llama3' from the tensor rope_freqs.weight" in refused[0].sentence()


def test_a_checkpoint_is_compared_never_changed(model_factory: ModelFactory) -> None:
    before, config, findings = findings_for(model_factory("gemma3"), correct=False)
    assert {f.action for f in findings} == {"differs"}
    assert config.to_dict() == before.to_dict()
    assert (
        findings[0]
        .sentence()
        .startswith("the checkpoint's config has query_pre_attn_scalar 256; the model file says 128")
    )


def test_a_long_per_layer_list_is_shown_by_its_exceptions(model_factory: ModelFactory) -> None:
    path = model_factory("gemma3", n_layer=12, swa_pattern=4)
    _before, _config, findings = findings_for(path)
    layer_types = next(f for f in findings if f.setting == "layer_types")
    assert "[sliding_attention except layers [3, 7, 11]]" in layer_types.sentence()
