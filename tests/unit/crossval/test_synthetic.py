"""Synthetic models: deterministic, of the requested types, and behaving like trained models."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine import GGUFModelFile, TraceRecorder, load_engine
from bitnet_crossval.crossval.synthetic import TENSOR_TYPES, default_spec, write_synthetic_model
from bitnet_crossval.errors import BadInput

TOKENS = [1, 300, 301, 279, 340, 310, 2, 355, 299, 360, 270, 333, 290, 301, 320, 330]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("arch", ["llama", "gemma3", "bitnet"])
def test_same_arguments_write_the_same_bytes(tmp_path: Path, tiny_vocab: Path, arch: str) -> None:
    a = write_synthetic_model(tmp_path / "a.gguf", arch=arch, tensor_type="Q4_0", vocab=tiny_vocab, seed=5)
    b = write_synthetic_model(tmp_path / "b.gguf", arch=arch, tensor_type="Q4_0", vocab=tiny_vocab, seed=5)
    c = write_synthetic_model(tmp_path / "c.gguf", arch=arch, tensor_type="Q4_0", vocab=tiny_vocab, seed=6)
    assert digest(a) == digest(b) != digest(c)


@pytest.mark.parametrize("tensor_type", TENSOR_TYPES)
def test_matrices_have_the_requested_type(model_factory: Any, tensor_type: str) -> None:
    model = GGUFModelFile(model_factory("bitnet", tensor_type))
    assert model.info("blk.0.attn_q.weight").type_name == tensor_type
    assert model.info("blk.2.ffn_down.weight").type_name == tensor_type
    assert model.info("blk.0.attn_norm.weight").type_name == "F32"
    ternary = tensor_type in {"TQ1_0", "TQ2_0", "I2_S"}
    assert model.info("token_embd.weight").type_name == ("F16" if ternary else tensor_type)
    assert model.architecture == ("bitnet-b1.58" if tensor_type == "I2_S" else "bitnet")


def test_quantised_model_is_the_float_model_quantised(model_factory: Any) -> None:
    f32 = load_engine(model_factory("llama", "F32"))
    q8 = load_engine(model_factory("llama", "Q8_0"))
    w32, w8 = f32.weight("blk.1.attn_k.weight"), q8.weight("blk.1.attn_k.weight")
    assert 0 < np.abs(w32 - w8).max() < 0.01 * np.abs(w32).max()


def test_bitnet_weights_are_ternary_times_one_scale(model_factory: Any) -> None:
    engine = load_engine(model_factory("bitnet"))
    for name in ("blk.0.attn_q.weight", "blk.1.ffn_up.weight"):
        w = engine.weight(name)
        levels = np.unique(np.abs(w))
        assert len(levels) == 2 and levels[0] == 0
        fractions = [(w < 0).mean(), (w == 0).mean(), (w > 0).mean()]
        assert all(0.25 < f < 0.42 for f in fractions), fractions


def test_vocabulary_is_copied_exactly(model_factory: Any, tiny_vocab: Path) -> None:
    vocab, model = GGUFModelFile(tiny_vocab), GGUFModelFile(model_factory("gemma3"))
    copied = [k for k in vocab.metadata_keys() if k.startswith("tokenizer.")]
    assert copied and all(model.get(k) == vocab.get(k) for k in copied)
    assert model.info("token_embd.weight").ne[1] == vocab.array_length("tokenizer.ggml.tokens")


def test_metadata_has_gqa_and_a_short_sliding_window(model_factory: Any) -> None:
    engine = load_engine(model_factory("gemma3"))
    hp = engine.hparams
    assert 1 < hp.n_head_kv < hp.n_head
    assert 0 < hp.n_swa < len(TOKENS)
    assert any(hp.swa_layers) and not all(hp.swa_layers)
    assert hp.head_dim != hp.n_embd // hp.n_head


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(z / z.sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("arch", ["llama", "gemma3", "bitnet"])
def test_activations_behave_like_a_trained_model(model_factory: Any, arch: str) -> None:
    engine = load_engine(model_factory(arch))
    hp = engine.hparams
    trace = TraceRecorder()
    logits = engine.forward(TOKENS, trace=trace).astype(np.float64)
    # logits: spread of a few units, not all equal, different predictions along the sequence
    spread = logits.std(axis=1)
    assert np.all((spread > 1.0) & (spread < 6.0)), spread
    probs = softmax(logits)
    top = probs.max(axis=1)
    assert np.all(top < 0.9) and np.all(top > 2.0 / engine.n_vocab), top  # never one-hot, never flat
    assert len(set(logits.argmax(axis=1).tolist())) > len(TOKENS) // 2
    # a token does not just predict itself (tied embeddings make that tempting)
    assert (logits.argmax(axis=1) == np.array(TOKENS)).mean() <= 0.125
    # attention: scaled scores of order one, so softmax is neither uniform nor one-hot
    for il in range(hp.n_layer):
        q, k = trace[f"Qcur-{il}"].astype(np.float64), trace[f"Kcur-{il}"].astype(np.float64)
        scores = np.einsum("qhd,khd->hqk", q, np.repeat(k, hp.n_group, axis=1)) * hp.attention_scale
        causal = np.tril(np.ones((len(TOKENS), len(TOKENS)), dtype=bool))
        attn = softmax(np.where(causal, scores, -np.inf))
        late = attn[:, 4:, :].max(axis=-1)  # rows with at least five keys
        assert 0.15 < late.mean() < 0.8, (il, late.mean())
    # nothing saturates or vanishes in the residual stream
    for il in range(hp.n_layer):
        rms = float(np.sqrt((trace[f"l_out-{il}"].astype(np.float64) ** 2).mean()))
        assert 0.05 < rms < 20, (il, rms)


def test_bad_arguments_are_bad_input(tmp_path: Path, tiny_vocab: Path) -> None:
    with pytest.raises(BadInput, match="tensor type 'Q4_K'"):
        write_synthetic_model(tmp_path / "x.gguf", arch="llama", tensor_type="Q4_K", vocab=tiny_vocab)
    with pytest.raises(BadInput, match="I2_S is a bitnet-only format"):
        write_synthetic_model(tmp_path / "x.gguf", arch="llama", tensor_type="I2_S", vocab=tiny_vocab)
    with pytest.raises(BadInput, match=r"no tokenizer\.ggml\.tokens"):
        empty = write_synthetic_model(tmp_path / "v.gguf", arch="llama", vocab=tiny_vocab)
        # a model file is no vocabulary once its tokens are gone: use a GGUF without them
        write_synthetic_model(tmp_path / "x.gguf", arch="llama", vocab=_strip_tokens(empty, tmp_path))
    from dataclasses import replace

    with pytest.raises(BadInput, match="multiple of 256"):
        write_synthetic_model(
            tmp_path / "x.gguf", arch="llama", vocab=tiny_vocab, spec=replace(default_spec("llama"), n_embd=200)
        )
    assert not (tmp_path / "x.gguf").exists()


def _strip_tokens(path: Path, tmp_path: Path) -> Path:
    import gguf

    out = tmp_path / "no-tokens.gguf"
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
