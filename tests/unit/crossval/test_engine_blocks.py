"""The engine's evaluation in blocks with a KV cache (``Engine.evaluate``) against its one-pass
forward: the same logits up to float rounding, for every architecture, block size, sliding
window, fault and output mode; memory bounded by the block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine import ALL_ARCHITECTURES, EngineOptions, Fault, FaultName, graph, load_engine, ops
from bitnet_crossval.crossval.engine.graph import KvCache
from bitnet_crossval.util.npy_rows import NpyWriter

# float32 rounding of differently split products and sums (1e-5 seen on logits of about 10), far
# below any difference the comparison could call a divergence.
ATOL = 1e-4
RTOL = 1e-5
# ggml's GELU goes through an fp16 table, so a rounding difference that moves an input across an
# fp16 step comes out as a jump of an fp16 ulp: the one-pass forward itself differs by 7e-4 between
# a prefix and the whole sequence on the synthetic gemma3. The exactness tests take the table out.
EXACT = EngineOptions(gelu_fp16_table=False)


def exact_with(fault: str, value: float | None = None) -> EngineOptions:
    return EngineOptions(gelu_fp16_table=False, fault=Fault(name=FaultName(fault), value=value))


def tokens_of(n: int, n_vocab: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_vocab, size=n)


def assert_same_logits(blocked: np.ndarray, one_pass: np.ndarray) -> None:
    assert blocked.shape == one_pass.shape
    np.testing.assert_allclose(blocked, one_pass, rtol=RTOL, atol=ATOL)
    # The same distribution too: the top tokens agree wherever they are not a near tie.
    assert (np.argmax(blocked, axis=1) == np.argmax(one_pass, axis=1)).mean() > 0.95


@pytest.mark.parametrize("arch", sorted(ALL_ARCHITECTURES))
@pytest.mark.parametrize("block", [1, 3, 8, 64])
def test_blocks_give_the_one_pass_logits(model_factory: Any, arch: str, block: int) -> None:
    engine = load_engine(model_factory(arch), EXACT)
    tokens = tokens_of(21, engine.n_vocab)
    assert_same_logits(engine.evaluate(tokens, block=block), engine.forward(tokens))


def test_blocks_with_the_gelu_table_stay_within_its_steps(model_factory: Any) -> None:
    engine = load_engine(model_factory("gemma3"))
    tokens = tokens_of(21, engine.n_vocab)
    np.testing.assert_allclose(engine.evaluate(tokens, block=3), engine.forward(tokens), rtol=0, atol=5e-3)


def test_a_sliding_window_shorter_than_the_block_and_the_sequence(model_factory: Any) -> None:
    """The synthetic gemma3 has a window of 6: blocks of 4 and 10 both cross it, and the cache of
    a sliding layer keeps only what a later query can see."""
    engine = load_engine(model_factory("gemma3"), EXACT)
    assert engine.hparams.n_swa == 6
    tokens = tokens_of(40, engine.n_vocab, seed=2)
    one_pass = engine.forward(tokens)
    for block in (4, 10):
        assert_same_logits(engine.evaluate(tokens, block=block), one_pass)


def test_the_window_changes_the_logits_past_it(model_factory: Any) -> None:
    """A check that the test above can fail: with a window wider than the sequence the blocks
    give other logits past position 6 (and the same before it)."""
    model = model_factory("gemma3")
    engine = load_engine(model, EXACT)
    wide = load_engine(
        model, EngineOptions(gelu_fp16_table=False, fault=Fault(name=FaultName("sliding_window"), value=100))
    )
    tokens = tokens_of(20, engine.n_vocab, seed=2)
    a, b = engine.evaluate(tokens, block=4), wide.evaluate(tokens, block=4)
    np.testing.assert_allclose(a[:6], b[:6], rtol=RTOL, atol=ATOL)
    assert np.abs(a[6:] - b[6:]).max(axis=1).min() > 1e-2


@pytest.mark.parametrize("fault", ["mask_ahead", "mask_no_self", "sliding_window", "rope_base", "gqa_mapping"])
def test_faults_are_the_same_fault_in_blocks(model_factory: Any, fault: str) -> None:
    engine = load_engine(
        model_factory("gemma3"), EngineOptions(gelu_fp16_table=False, fault=Fault(name=FaultName(fault)))
    )
    tokens = tokens_of(17, engine.n_vocab, seed=3)
    assert_same_logits(engine.evaluate(tokens, block=5), engine.forward(tokens))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_streamed_output_weights_and_emulated_rounding_in_blocks(model_factory: Any, arch: str) -> None:
    model = model_factory(arch, "Q8_0")
    options = EngineOptions(output_weights="stream", emulate_activation_quant=True, gelu_fp16_table=False)
    streamed = load_engine(model, options)
    tokens = tokens_of(19, streamed.n_vocab, seed=4)
    assert_same_logits(streamed.evaluate(tokens, block=6), load_engine(model, options).forward(tokens))


def test_an_f16_kv_cache_in_blocks_stays_within_its_rounding(model_factory: Any) -> None:
    """K, V and the probabilities pass through fp16 (an F16 cache), which turns rounding
    differences into fp16 steps, as the GELU table does: 4.5e-3 seen on logits of about 10."""
    engine = load_engine(model_factory("llama", "Q8_0"), EngineOptions(kv_cache="f16"))
    tokens = tokens_of(19, engine.n_vocab, seed=4)
    np.testing.assert_allclose(engine.evaluate(tokens, block=6), engine.forward(tokens), rtol=0, atol=2e-2)


def test_a_final_softcap_is_applied_in_blocks(model_factory: Any) -> None:
    engine = load_engine(model_factory("gemma3", final_logit_softcap=3.0), EXACT)
    tokens = tokens_of(12, engine.n_vocab, seed=5)
    blocked = engine.evaluate(tokens, block=5)
    assert np.abs(blocked).max() <= 3.0  # tanh(x / cap) * cap
    assert_same_logits(blocked, engine.forward(tokens))


def test_logits_are_written_into_a_file_by_pieces_and_progress_is_reported(model_factory: Any, tmp_path: Path) -> None:
    engine = load_engine(model_factory("llama"))
    tokens = tokens_of(9, engine.n_vocab, seed=6)
    out = NpyWriter(tmp_path / "l.npy", 9, engine.n_vocab)
    progress: list[float] = []
    assert engine.evaluate(tokens, out=out, block=4, progress=progress.append) is out
    assert_same_logits(out.rows(), engine.forward(tokens))
    assert progress == sorted(progress) and progress[:3] == [2.0, 4.0, 4.5] and progress[-1] == 9.0


def test_an_array_out_gets_the_same_logits(model_factory: Any) -> None:
    engine = load_engine(model_factory("bitnet"), EXACT)
    tokens = tokens_of(11, engine.n_vocab, seed=6)
    out = np.full((11, engine.n_vocab), np.nan, dtype=np.float32)
    assert engine.evaluate(tokens, out=out, block=4) is out
    assert_same_logits(out, engine.forward(tokens))


def test_an_out_array_of_the_wrong_shape_is_refused(model_factory: Any) -> None:
    engine = load_engine(model_factory("llama"))
    with pytest.raises(ValueError, match="float32"):
        engine.evaluate([1, 2, 3], out=np.empty((2, engine.n_vocab), dtype=np.float32))


def test_the_cache_of_a_sliding_layer_keeps_only_the_window(
    model_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the engine holds between blocks does not grow with the sequence on windowed layers."""
    engine = load_engine(model_factory("gemma3"))
    hp = engine.hparams
    seen: list[KvCache] = []
    original = KvCache.extend

    def spy(self: KvCache, il: int, k: Any, v: Any, positions: Any, *, window: int = 0) -> Any:
        if not seen or seen[-1] is not self:
            seen.append(self)
        return original(self, il, k, v, positions, window=window)

    monkeypatch.setattr(KvCache, "extend", spy)
    engine.evaluate(tokens_of(30, engine.n_vocab), block=4)
    cache = seen[-1]
    for il, held in cache.layers.items():
        if hp.is_swa(il):  # the window before the last block's first query, and the block
            assert held.positions.shape[0] <= hp.n_swa - 1 + 4, il
            assert held.positions[-1] == 29
        else:
            assert held.positions.shape[0] == 30


def test_attention_in_head_groups_changes_no_value(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    q = rng.standard_normal((5, 4, 8)).astype(np.float32)
    k = rng.standard_normal((9, 2, 8)).astype(np.float32)
    v = rng.standard_normal((9, 2, 8)).astype(np.float32)
    allowed = ops.attention_mask(np.arange(4, 9), np.arange(9), window=3)
    kv_head = np.arange(4) // 2
    whole = ops.attention(q, k, v, allowed=allowed, kq_scale=0.3, kv_head=kv_head)
    monkeypatch.setattr(ops, "ATTENTION_SCORES_BUDGET", 5 * 9)  # one head at a time
    assert np.array_equal(ops.attention(q, k, v, allowed=allowed, kq_scale=0.3, kv_head=kv_head), whole)


def test_the_output_matrix_is_read_once_per_sequence(model_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamed, every slab of the output matrix is dequantised once however many blocks there are."""
    engine = load_engine(model_factory("llama", "Q8_0"), EngineOptions(output_weights="stream"))
    monkeypatch.setattr(graph, "OUTPUT_ROWS_PER_SLAB", 100)
    calls: list[str] = []
    original = engine.model.rows

    def rows(name: str, index: np.ndarray) -> np.ndarray:
        calls.append(name)
        return original(name, index)

    monkeypatch.setattr(engine.model, "rows", rows)
    engine.evaluate(tokens_of(12, engine.n_vocab), block=3)
    n_slabs = -(-engine.n_vocab // 100)
    assert calls.count("output.weight") + calls.count("token_embd.weight") == n_slabs + 4  # + 4 embedding lookups
