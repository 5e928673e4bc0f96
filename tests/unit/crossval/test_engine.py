"""The engine without C++: semantics against an independent float64 pass, traces, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine import EngineOptions, TraceRecorder, load_engine
from bitnet_crossval.crossval.engine.trace import split_key, trace_key
from bitnet_crossval.errors import BadInput
from tests.unit.crossval import naive
from tests.unit.crossval.test_gguf_file import write_gguf

TOKENS = [1, 300, 301, 259 + 20, 340, 310, 2, 355, 299, 360, 270, 333]  # 12 positions > gemma3's window


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean() / (b**2).mean()))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "bitnet"])
def test_forward_matches_an_independent_float64_pass(model_factory: Any, arch: str) -> None:
    path = model_factory(arch)
    engine = load_engine(path, EngineOptions(gelu_fp16_table=False))
    logits = engine.forward(TOKENS)
    assert logits.dtype == np.float32 and logits.shape == (len(TOKENS), engine.n_vocab)
    expected = naive.forward(path, TOKENS)
    assert rel_err(logits, expected) < 2e-5


def test_bitnet_relu2_matches_an_independent_float64_pass(model_factory: Any) -> None:
    path = model_factory("bitnet")
    logits = load_engine(path, EngineOptions(bitnet_activation="relu2")).forward(TOKENS)
    assert rel_err(logits, naive.forward(path, TOKENS, bitnet_activation="relu2")) < 2e-5
    silu = load_engine(path).forward(TOKENS)
    assert rel_err(silu, logits) > 1e-2  # the activation matters


def test_gelu_table_is_a_small_deliberate_difference(model_factory: Any) -> None:
    path = model_factory("gemma3")
    table = load_engine(path).forward(TOKENS)
    exact = load_engine(path, EngineOptions(gelu_fp16_table=False)).forward(TOKENS)
    assert 0 < rel_err(table, exact) < 1e-3


def test_causality_later_tokens_do_not_change_earlier_logits(model_factory: Any) -> None:
    # Without the fp16 GELU table (which turns 1-ulp BLAS differences between batch sizes into
    # fp16 steps), a prefix gives the same rows up to float rounding.
    engine = load_engine(model_factory("gemma3"), EngineOptions(gelu_fp16_table=False))
    full = engine.forward(TOKENS)
    prefix = engine.forward(TOKENS[:5])
    np.testing.assert_allclose(prefix, full[:5], rtol=1e-4, atol=1e-4)


def test_i2s_model_has_the_same_weights_as_the_float_model(model_factory: Any) -> None:
    f32 = load_engine(model_factory("bitnet", "F32"))
    i2s = load_engine(model_factory("bitnet", "I2_S"))
    assert i2s.hparams.architecture == "bitnet-b1.58"
    assert i2s.describe()["bitnet_activation"] == "relu2"  # the fork's b1.58 graph
    for name in ("blk.0.attn_q.weight", "blk.2.ffn_down.weight"):
        assert i2s.model.info(name).type_name == "I2_S"
        np.testing.assert_array_equal(i2s.weight(name), f32.weight(name))
    relu2 = load_engine(model_factory("bitnet", "F32"), EngineOptions(bitnet_activation="relu2"))
    # only the embedding differs (F16 in the ternary file)
    assert rel_err(i2s.forward(TOKENS), relu2.forward(TOKENS)) < 1e-2


EXPECTED_LAYER_NAMES = {
    "llama": [
        "attn_norm", "Qcur", "Vcur", "Kcur", "kqv_out", "attn_out", "ffn_inp", "norm", "ffn_norm",
        "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_out", "l_out",
    ],
    "gemma3": [
        "attn_norm", "Qcur_normed", "Qcur", "Kcur_normed", "Kcur", "Vcur", "kqv_out", "attn_post_norm",
        "sa_out", "norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_geglu", "ffn_out", "ffn_post_norm", "l_out",
    ],
    "bitnet": [
        "attn_norm", "Qcur", "Vcur", "Kcur", "kqv_out", "attn_sub_norm", "attn_out", "ffn_inp", "ffn_norm",
        "ffn_gate", "ffn_up", "ffn_sub_out", "norm", "ffn_sub_norm", "ffn_down", "l_out",
    ],
}  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "gemma3", "bitnet"])
def test_trace_names_and_order_follow_llama_cpp(model_factory: Any, arch: str) -> None:
    engine = load_engine(model_factory(arch, n_layer=2))
    head = ["embd", "inp_scaled"] if arch == "gemma3" else ["embd"]
    expected = head + [trace_key(n, il) for il in range(2) for n in EXPECTED_LAYER_NAMES[arch]]
    expected += ["norm", "result_norm", "result_output"]
    assert engine.trace_names() == expected


def test_gemma3_without_sliding_window_evaluates_v_before_k(model_factory: Any) -> None:
    names = load_engine(model_factory("gemma3", n_layer=1, sliding_window=0)).trace_names()
    assert names.index("Vcur-0") < names.index("Kcur_normed-0")


def test_trace_shapes_put_tokens_first(model_factory: Any) -> None:
    engine = load_engine(model_factory("gemma3"))
    hp = engine.hparams
    recorder = TraceRecorder()
    engine.forward(TOKENS, trace=recorder)
    n = len(TOKENS)
    assert recorder["embd"].shape == (n, hp.n_embd)
    assert recorder["Qcur-0"].shape == (n, hp.n_head, hp.head_dim)
    assert recorder["Kcur-1"].shape == (n, hp.n_head_kv, hp.head_dim)
    assert recorder["Vcur-1"].shape == (n, hp.n_head_kv, hp.head_dim)
    assert recorder["kqv_out-0"].shape == (n, hp.n_head * hp.head_dim)
    assert recorder["ffn_geglu-0"].shape == (n, hp.n_ff)
    assert recorder["norm-0"].shape == (n, hp.n_embd)  # the last norm of layer 0: ffn_norm's input, normalised
    assert recorder["result_output"].shape == (n, engine.n_vocab)
    np.testing.assert_array_equal(recorder["result_output"], engine.forward(TOKENS))
    assert all(a.dtype == np.float32 for a in recorder.entries.values())


def test_recorder_filters_bound_what_is_kept(model_factory: Any) -> None:
    engine = load_engine(model_factory("llama"))
    recorder = TraceRecorder(layers=[1], names=["attn_*", "Qcur", "result_output"], positions=[0, 5])
    engine.forward(TOKENS, trace=recorder)
    assert recorder.keys() == ["attn_norm-1", "Qcur-1", "attn_out-1", "result_output"]
    assert recorder["attn_norm-1"].shape == (2, engine.hparams.n_embd)
    full = TraceRecorder()
    engine.forward(TOKENS, trace=full)
    np.testing.assert_array_equal(recorder["Qcur-1"], full["Qcur-1"][[0, 5]])
    assert recorder.nbytes() < full.nbytes() / 10
    regex = TraceRecorder(name_regex=r"(Qcur|Kcur)-[01]")
    engine.forward(TOKENS, trace=regex)
    assert regex.keys() == ["Qcur-0", "Kcur-0", "Qcur-1", "Kcur-1"]
    no_global = TraceRecorder(names=["result_*"], include_global=False)
    engine.forward(TOKENS, trace=no_global)
    assert len(no_global) == 0


def test_recorder_keeps_the_last_node_of_a_name_at_its_place() -> None:
    recorder = TraceRecorder()
    recorder.record("Qcur", 0, np.zeros((2, 1), np.float32))
    recorder.record("Vcur", 0, np.ones((2, 1), np.float32))
    recorder.record("Qcur", 0, np.full((2, 1), 7, np.float32))
    assert recorder.keys() == ["Vcur-0", "Qcur-0"]
    assert recorder["Qcur-0"][0, 0] == 7
    assert split_key("ffn_sqr(relu)-12") == ("ffn_sqr(relu)", 12) and split_key("result_norm") == ("result_norm", -1)


def test_relu2_trace_names(model_factory: Any) -> None:
    names = load_engine(model_factory("bitnet", n_layer=1), EngineOptions(bitnet_activation="relu2")).trace_names()
    start = names.index("ffn_gate-0")
    assert names[start : start + 5] == ["ffn_gate-0", "ffn_relu-0", "ffn_sqr(relu)-0", "ffn_up-0", "ffn_sub_out-0"]


def test_bitnet_scale_tensors_are_applied(model_factory: Any) -> None:
    baked = load_engine(model_factory("bitnet"))
    separate = load_engine(model_factory("bitnet", scale_tensors=True))
    assert separate.model.has_tensor("blk.0.attn_q.scale")
    names = separate.trace_names()
    assert "ffn_gate_s-0" in names and "ffn_up_s-0" in names
    assert rel_err(separate.forward(TOKENS), baked.forward(TOKENS)) < 1e-5


def test_llama_biases_and_rope_freqs_are_read(model_factory: Any) -> None:
    plain = load_engine(model_factory("llama")).forward(TOKENS)
    extra = load_engine(model_factory("llama", attention_bias=True, ffn_bias=True, rope_freqs=True))
    assert "ffn_up_b-0" in extra.trace_names()
    assert rel_err(extra.forward(TOKENS), plain) > 1e-3


# --- validation ---


def test_tokens_are_validated(model_factory: Any) -> None:
    engine = load_engine(model_factory("llama"))
    with pytest.raises(BadInput, match="outside the model's vocabulary"):
        engine.forward([1, engine.n_vocab])
    with pytest.raises(BadInput, match="non-empty"):
        engine.forward([])
    with pytest.raises(BadInput, match="integer token ids"):
        engine.forward(np.array([0.5, 1.5]))


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "x.gguf", "mamba", [("token_embd.weight", np.zeros((4, 8), np.float32), {})])
    with pytest.raises(
        BadInput, match=r"'mamba' is not supported .*supported: bitnet, bitnet-25, bitnet-b1.58, gemma3, llama"
    ):
        load_engine(path)


def test_missing_tensor_is_named(tmp_path: Path, model_factory: Any) -> None:
    import gguf

    source = gguf.GGUFReader(model_factory("llama"))
    path = tmp_path / "holey.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, field in source.fields.items():
        if key.startswith("llama.") and field.types[0].name != "ARRAY":
            writer.add_key_value(key, field.contents(), field.types[0])
    for t in source.tensors:
        if t.name != "blk.1.ffn_up.weight":
            writer.add_tensor(t.name, np.asarray(t.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        BadInput, match=r"has no tensor blk\.1\.ffn_up\.weight, which its architecture \(llama\) requires"
    ):
        load_engine(path)


def test_missing_metadata_is_named(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", "llama", [("token_embd.weight", np.zeros((4, 8), np.float32), {})])
    with pytest.raises(BadInput, match=r"lacks the metadata key llama\.embedding_length"):
        load_engine(path)


def test_wrong_tensor_shape_is_bad_input(tmp_path: Path, model_factory: Any) -> None:
    import gguf

    source = gguf.GGUFReader(model_factory("llama"))
    path = tmp_path / "shape.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    for key, field in source.fields.items():
        if key.startswith("llama.") and field.types[0].name != "ARRAY":
            value = field.contents()
            writer.add_key_value(key, value * 2 if key == "llama.feed_forward_length" else value, field.types[0])
    for t in source.tensors:
        writer.add_tensor(t.name, np.asarray(t.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        BadInput, match=r"blk\.0\.ffn_gate\.weight .*has shape \[256, 512\], its metadata implies \[256, 1024\]"
    ):
        load_engine(path)


def test_describe_records_the_choices(model_factory: Any) -> None:
    facts = load_engine(model_factory("bitnet"), EngineOptions(kv_cache="f16")).describe()
    assert facts["architecture"] == "bitnet" and facts["bitnet_activation"] == "silu"
    assert facts["rope_type"] == "neox" and facts["kv_cache"] == "f16" and facts["fault"] is None
    gemma = load_engine(model_factory("gemma3")).describe()
    assert gemma["swa_layers"] == [0, 1, 3] and gemma["n_swa"] == 6 and gemma["rope_base_swa"] == 10000.0


@pytest.mark.parametrize(("arch", "tensor_type"), [("gemma3", "Q8_0"), ("llama", "Q4_0"), ("bitnet", "F16")])
def test_streamed_output_weights_give_the_same_logits(model_factory: Any, arch: str, tensor_type: str) -> None:
    path = model_factory(arch, tensor_type)
    cached = load_engine(path).forward(TOKENS)
    streamed_engine = load_engine(path, EngineOptions(output_weights="stream"))
    streamed = streamed_engine.forward(TOKENS)
    np.testing.assert_allclose(streamed, cached, rtol=1e-5, atol=1e-5)
    output = "output.weight" if arch == "llama" else "token_embd.weight"
    assert output not in streamed_engine.model._cache  # never held whole
