"""The hf candidate's trace hooks on tiny transformers models built from a config (random weights).

Each recorded tensor is checked against a relation transformers' own modules define (a residual
sum, a projection, RoPE leaving position 0 alone), so a tap on the wrong module or with the
wrong layout fails here without llama.cpp.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.hf

from bitnet_crossval.crossval.engine.trace import TraceRecorder  # noqa: E402
from bitnet_crossval.crossval.hf.runner import forward  # noqa: E402
from bitnet_crossval.crossval.hf.taps import GEMMA3, LLAMA, attached  # noqa: E402

N_LAYERS = 2
TOKENS = np.array([1, 5, 9, 3, 7, 2, 11], dtype=np.int64)


def tiny_llama() -> Any:
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gemma3() -> Any:
    config = transformers.Gemma3TextConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=32,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # norms initialise to zero (weight 1 + 0): give them something to do
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.2)
    return model


def close(actual: Any, desired: Any) -> None:
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-6)


def traced(model: Any, recorder: TraceRecorder | None = None) -> tuple[TraceRecorder, np.ndarray]:
    recorder = recorder if recorder is not None else TraceRecorder()
    logits, _facts = forward(model, TOKENS, recorder=recorder)
    return recorder, logits


def expected_names(table: Any, n_layers: int) -> set[str]:
    names = {t.name for t in table.model_taps_before + table.model_taps_after} | {"result_output"}
    for il in range(n_layers):
        names |= {f"{t.name}-{il}" for t in table.layer_taps} | {f"{n}-{il}" for n in table.rotary}
    return names


@pytest.mark.parametrize(("make", "table"), [(tiny_llama, LLAMA), (tiny_gemma3, GEMMA3)], ids=["llama", "gemma3"])
def test_every_tap_records_once_per_layer_with_the_token_axis_first(make: Any, table: Any) -> None:
    model = make()
    recorder, logits = traced(model)
    assert set(recorder.keys()) == expected_names(table, N_LAYERS)
    n = len(TOKENS)
    for key, value in recorder.entries.items():
        assert value.dtype == np.float32 and value.shape[0] == n, (key, value.shape)
    assert recorder["Qcur-0"].shape == (n, 4, model.config.head_dim)
    assert recorder["Kcur-1"].shape == recorder["Vcur-1"].shape == (n, 2, model.config.head_dim)
    assert recorder["kqv_out-0"].shape == (n, 4 * model.config.head_dim)
    np.testing.assert_array_equal(recorder["result_output"], logits)


def test_llama_taps_obey_the_layer_arithmetic() -> None:
    model = tiny_llama()
    r, _ = traced(model)
    layer = model.model.layers[0]
    close(r["ffn_inp-0"], r["embd"] + r["attn_out-0"])
    close(r["l_out-0"], r["ffn_inp-0"] + r["ffn_out-0"])
    o_proj = layer.self_attn.o_proj.weight.detach().numpy()
    close(r["attn_out-0"], r["kqv_out-0"] @ o_proj.T)
    silu = r["ffn_gate-0"] / (1 + np.exp(-r["ffn_gate-0"]))
    close(r["ffn_swiglu-0"], silu * r["ffn_up-0"])
    v_proj = layer.self_attn.v_proj.weight.detach().numpy()
    close(r["Vcur-0"].reshape(len(TOKENS), -1), r["attn_norm-0"] @ v_proj.T)
    # RoPE leaves position 0 alone: Q there is the projection, split into heads in transformers' order.
    q_proj = layer.self_attn.q_proj.weight.detach().numpy()
    close(r["Qcur-0"][0].reshape(-1), (r["attn_norm-0"] @ q_proj.T)[0])
    assert not np.allclose(r["Qcur-0"][1].reshape(-1), (r["attn_norm-0"] @ q_proj.T)[1])


def test_gemma3_taps_obey_the_layer_arithmetic() -> None:
    model = tiny_gemma3()
    r, _ = traced(model)
    close(r["sa_out-0"], r["inp_scaled"] + r["attn_post_norm-0"])
    close(r["l_out-0"], r["sa_out-0"] + r["ffn_post_norm-0"])
    close(r["Qcur-1"][0], r["Qcur_normed-1"][0])  # RoPE at position 0
    close(r["Kcur-0"][0], r["Kcur_normed-0"][0])
    embed = model.model.embed_tokens.weight.detach().numpy()[TOKENS]
    close(r["inp_scaled"], embed * np.float32(np.sqrt(64.0)))


def test_the_filters_of_a_trace_request_are_applied() -> None:
    recorder, _ = traced(tiny_llama(), TraceRecorder(layers=[1], include_global=False, positions=[0, 2]))
    assert len(recorder) and all(key.endswith("-1") for key in recorder)
    assert recorder["l_out-1"].shape == (2, 64)
    recorder, _ = traced(tiny_llama(), TraceRecorder(name_regex=r"(Q|K)cur-0"))
    assert sorted(recorder.keys()) == ["Kcur-0", "Qcur-0"]


def test_hooks_and_the_rope_wrapper_are_gone_after_the_trace() -> None:
    model = tiny_llama()
    modeling = sys.modules[type(model.model.layers[0].self_attn).__module__]
    original = modeling.apply_rotary_pos_emb
    recorder = TraceRecorder()
    with pytest.raises(RuntimeError), attached(model, recorder):
        assert modeling.apply_rotary_pos_emb is not original
        raise RuntimeError("a failing forward pass")
    assert modeling.apply_rotary_pos_emb is original
    with torch.inference_mode():
        model(input_ids=torch.from_numpy(TOKENS)[None], use_cache=False)
    assert len(recorder) == 0


def test_a_module_the_model_lacks_is_listed_and_not_recorded() -> None:
    renamed = tiny_llama()  # as if a transformers version had renamed one projection
    renamed.model.layers[1].mlp.gate = renamed.model.layers[1].mlp.gate_proj
    del renamed.model.layers[1].mlp.gate_proj
    recorder = TraceRecorder()
    with attached(renamed, recorder) as session:
        assert session is not None
        assert session.unmapped == ["ffn_gate-1"]


def test_an_architecture_without_a_table_records_nothing() -> None:
    config = transformers.GPT2Config(vocab_size=32, n_embd=32, n_layer=1, n_head=2, n_positions=16)
    model = transformers.GPT2LMHeadModel(config).eval()
    recorder, logits = traced(model)
    assert len(recorder) == 0 and logits.shape == (len(TOKENS), 32)
