"""Hyperparameters read as llama.cpp reads them, defaults included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.hparams import check_hyperparameters, read_hparams
from bitnet_crossval.errors import BadInput


def model_with(tmp_path: Path, arch: str, extra: dict[str, Any]) -> GGUFModelFile:
    import gguf

    meta: dict[str, Any] = {
        "embedding_length": 64,
        "block_count": 12,
        "attention.head_count": 4,
        "attention.head_count_kv": 2,
        "feed_forward_length": 128,
        "attention.layer_norm_rms_epsilon": 1e-6,
    }
    meta.update(extra)
    path = tmp_path / f"{arch}.gguf"
    writer = gguf.GGUFWriter(path, arch)
    for key, value in meta.items():
        if value is None:
            continue
        full = f"{arch}.{key}"
        if isinstance(value, list):
            writer.add_array(full, value)
        elif isinstance(value, str):
            writer.add_string(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        else:
            writer.add_uint32(full, value)
    writer.add_tensor("token_embd.weight", np.zeros((10, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFModelFile(path)


def test_llama_defaults(tmp_path: Path) -> None:
    hp = read_hparams(model_with(tmp_path, "llama", {}))
    assert (hp.rope_type, hp.rope_base, hp.rope_freq_scale, hp.n_rot, hp.head_dim) == ("norm", 10000.0, 1.0, 16, 16)
    assert hp.n_vocab == 10 and hp.n_group == 2 and not any(hp.swa_layers)
    assert hp.attention_scale == pytest.approx(0.25)


def test_gemma3_sliding_window_defaults(tmp_path: Path) -> None:
    hp = read_hparams(
        model_with(
            tmp_path,
            "gemma3",
            {"attention.sliding_window": 512, "attention.key_length": 32, "attention.value_length": 32},
        )
    )
    assert hp.rope_type == "neox" and hp.n_swa == 512 and hp.rope_base_swa == 10000.0
    assert [il for il in range(12) if hp.is_swa(il)] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]  # pattern 6
    assert hp.attention_scale == pytest.approx(32**-0.5)
    assert hp.layer_rope(5) == (10000.0, 1.0) and hp.layer_rope(0) == (10000.0, 1.0)


def test_gemma3_pattern_as_bools_and_own_swa_base(tmp_path: Path) -> None:
    pattern = [True, False] * 6
    hp = read_hparams(
        model_with(
            tmp_path,
            "gemma3",
            {
                "attention.sliding_window": 4,
                "attention.sliding_window_pattern": pattern,
                "rope.freq_base": 1e6,
                "rope.freq_base_swa": 5000.0,
                "rope.scaling.factor": 8.0,
                "final_logit_softcapping": 30.0,
            },
        )
    )
    assert [hp.is_swa(il) for il in range(12)] == pattern
    assert hp.layer_rope(0) == (5000.0, 1.0)  # SWA layers keep freq_scale 1
    assert hp.layer_rope(1) == (1e6, 0.125)
    assert hp.final_logit_softcap == 30.0


def test_gemma3_without_window_has_no_swa_layers(tmp_path: Path) -> None:
    hp = read_hparams(model_with(tmp_path, "gemma3", {"attention.sliding_window_pattern": 2}))
    assert hp.n_swa == 0 and not any(hp.is_swa(il) for il in range(12))


def test_gemma3_27b_scales_by_n_embd_over_n_head(tmp_path: Path) -> None:
    hp = read_hparams(
        model_with(tmp_path, "gemma3", {"block_count": 62, "attention.key_length": 32, "attention.value_length": 32})
    )
    assert hp.attention_scale == pytest.approx((64 / 4) ** -0.5)


def test_per_layer_head_counts(tmp_path: Path) -> None:
    hp = read_hparams(model_with(tmp_path, "llama", {"attention.head_count_kv": [2] * 12}))
    assert hp.n_head_kv == 2
    with pytest.raises(BadInput, match="per layer with different values"):
        read_hparams(model_with(tmp_path, "llama", {"attention.head_count_kv": [2] * 11 + [4]}))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"rope.scaling.type": "yarn"}, "rope scaling 'yarn'"),
        ({"attention.head_count_kv": 3}, "not a multiple of its 3 K/V heads"),
        ({"attention.layer_norm_rms_epsilon": None}, "lacks the metadata key llama.attention.layer_norm_rms_epsilon"),
        ({"rope.dimension_count": 8}, "rotates 8 dimensions per head, llama.cpp requires 16"),
        ({"embedding_length": 32}, "token embedding .* has shape"),
    ],
)
def test_bad_metadata_is_bad_input(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        read_hparams(model_with(tmp_path, "llama", extra))


# --- hyperparameters llama.cpp aborts on or turns into NaN, for any architecture ---------------------

EPS = "attention.layer_norm_rms_epsilon"
BAD_HYPERPARAMETERS: list[tuple[dict[str, Any], str]] = [
    ({EPS: -1e-5}, f"{EPS} = -1e-05: a norm epsilon must be greater than 0"),
    ({EPS: 0.0}, f"{EPS} = 0: a norm epsilon must be greater than 0"),
    ({EPS: float("nan")}, f"{EPS} = nan: it must be a finite number"),
    ({"attention.layer_norm_epsilon": -1.0}, "attention.layer_norm_epsilon = -1: a norm epsilon must be greater "
     "than 0"),
    ({"rope.freq_base": float("nan")}, "rope.freq_base = nan: it must be a finite number"),
    ({"rope.freq_base": float("inf")}, "rope.freq_base = inf: it must be a finite number"),
    ({"rope.freq_base": 0.0}, "rope.freq_base = 0: a RoPE base must be greater than 0"),
    ({"rope.freq_base_swa": -1.0}, "rope.freq_base_swa = -1: a RoPE base must be greater than 0"),
    ({"rope.scaling.factor": -4.0}, "rope.scaling.factor = -4: a RoPE scale factor must be 0 (none) or more"),
    ({"rope.scale_linear": float("-inf")}, "rope.scale_linear = -inf: it must be a finite number"),
    ({"rope.scaling.attn_factor": 0.0}, "rope.scaling.attn_factor = 0: a RoPE attention factor must be greater than 0"),
    ({"final_logit_softcapping": -30.0}, "final_logit_softcapping = -30: a logit softcap must be 0 (none) or more"),
    ({"attention.scale": float("nan")}, "attention.scale = nan: it must be a finite number"),
    ({"some_future_key": [1.0, float("nan")]}, "some_future_key = [1, nan, ...]: it must be a finite number"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "fragment"), BAD_HYPERPARAMETERS, ids=[next(iter(e.keys())) for e, _ in BAD_HYPERPARAMETERS]
)
@pytest.mark.parametrize("arch", ["llama", "gemma3", "notanarch"])
def test_hyperparameters_llama_cpp_cannot_use_are_bad_input_for_any_architecture(
    tmp_path: Path, extra: dict[str, Any], fragment: str, arch: str
) -> None:
    model = model_with(tmp_path, arch, extra)
    with pytest.raises(BadInput) as raised:
        check_hyperparameters(model)
    assert f"declares {arch}.{fragment}" in raised.value.message
    assert "(llama.cpp would abort or compute NaN)" in raised.value.message
    assert "re-convert or re-download" in raised.value.next_step


def test_the_engine_refuses_them_too(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="a norm epsilon must be greater than 0"):
        read_hparams(model_with(tmp_path, "llama", {"attention.layer_norm_rms_epsilon": -1e-5}))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"rope.scaling.factor": 0.0, "final_logit_softcapping": 0.0},  # 0 means none for both
        {"rope.freq_base": 1e6, "rope.scaling.factor": 8.0, "attention.layer_norm_epsilon": 1e-12},
    ],
)
def test_usual_hyperparameters_pass(tmp_path: Path, extra: dict[str, Any]) -> None:
    check_hyperparameters(model_with(tmp_path, "llama", extra))
