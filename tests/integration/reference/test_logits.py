"""`logits` and `generate` against the real pinned llama.cpp on a tiny synthetic llama."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.reference.client import Shim
from tests.gguf_models import spm_vocabulary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_logits_cover_every_position(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    logits, meta = shim.logits(tiny_model, prompt)
    n_vocab = len(spm_vocabulary()[0])
    assert logits.shape == (len(prompt), n_vocab)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    for i in range(1, len(prompt)):
        assert not np.allclose(logits[i], logits[i - 1]), f"rows {i - 1} and {i} are the same"
    assert meta["n_tokens"] == len(prompt)
    assert meta["flash_attn"] is False
    assert meta["causal"] is True
    assert meta["kv_type"] == "f32"
    assert meta["threads"] == 1
    assert meta["n_decode_calls"] == 1
    assert meta["n_ubatch"] >= len(prompt)
    assert meta["api"] == "current"


def test_logits_are_causal(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    full, _ = shim.logits(tiny_model, prompt)
    k = len(prompt) // 2
    prefix, _ = shim.logits(tiny_model, prompt[:k])
    np.testing.assert_allclose(prefix, full[:k], rtol=0, atol=1e-6)

    changed_last = (*prompt[:-1], (prompt[-1] + 1) % full.shape[1])
    other, _ = shim.logits(tiny_model, changed_last)
    np.testing.assert_allclose(other[:-1], full[:-1], rtol=0, atol=1e-6)
    assert not np.allclose(other[-1], full[-1])


def test_logits_are_deterministic(shim: Shim, tiny_model: Path, prompt: tuple[int, ...], work: Path) -> None:
    first, _ = shim.logits(tiny_model, prompt)
    second, _ = shim.logits(tiny_model, prompt, out_dir=work / "arrays")
    assert isinstance(second, np.memmap)
    assert Path(str(second.filename)).parent == work / "arrays"
    np.testing.assert_array_equal(first, second)


def test_logits_with_f16_kv_cache_are_recorded_and_close(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    f32, _ = shim.logits(tiny_model, prompt, kv_type="f32")
    f16, meta = shim.logits(tiny_model, prompt, kv_type="f16", threads=2)
    assert (meta["kv_type"], meta["threads"]) == ("f16", 2)
    np.testing.assert_allclose(f16, f32, rtol=0, atol=0.05)


def test_generate_follows_the_argmax_chain(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    n = 6
    generation = shim.generate(tiny_model, prompt, n=n)
    assert len(generation.tokens) == n
    assert generation.logits.shape[0] == n
    assert list(generation.tokens) == [int(i) for i in generation.logits.argmax(axis=1)]

    # Each step's row equals the batched evaluation of the same prefix.
    batched, _ = shim.logits(tiny_model, (*prompt, *generation.tokens[:-1]))
    np.testing.assert_allclose(generation.logits, batched[len(prompt) - 1 :], rtol=0, atol=1e-4)


def test_the_kv_cache_choice_is_reported(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    _, auto = shim.logits(tiny_model, prompt)
    assert (auto["kv_type_requested"], auto["kv_type_k"], auto["kv_type_v"], auto["kv_fallback"]) == (
        "auto",
        "f32",
        "f32",
        None,  # this llama.cpp takes an F32 V cache without flash attention
    )
    _, f16 = shim.logits(tiny_model, prompt, kv_type="f16")
    assert (f16["kv_type"], f16["kv_type_k"], f16["kv_type_v"]) == ("f16", "f16", "f16")


def test_rows_of_a_short_run_against_the_same_rows_of_a_longer_one(
    shim: Shim, tiny_model: Path, wide_model: Path, prompt: tuple[int, ...], tmp_path: Path
) -> None:
    """What docs/reference/shim.md states about prefixes, on what a test can build: with F32
    weights a run of >= 2 tokens gives the longer run's rows exactly and a 1-token run (a
    matrix-vector path) only nearly; with K-quant weights the rows of a short run can differ
    slightly in the last digits. (Gemma 3 270M Q4_K_M differs by up to 1.8; see the doc.)"""
    tokens = (*prompt, *prompt)[:16]
    full, _ = shim.logits(tiny_model, tokens)
    for k in (2, 3, 5, 8):
        part, _ = shim.logits(tiny_model, tokens[:k])
        np.testing.assert_array_equal(part, full[:k])
    one, _ = shim.logits(tiny_model, tokens[:1])
    np.testing.assert_allclose(one, full[:1], rtol=0, atol=1e-4)

    quantized = shim.quantize(wide_model, tmp_path / "wide-q4_k_m.gguf", "Q4_K_M").out
    qfull, _ = shim.logits(quantized, tokens)
    for k in (1, 3, 5, 8, 9):
        part, _ = shim.logits(quantized, tokens[:k])
        np.testing.assert_allclose(part, qfull[:k], rtol=0, atol=1e-3)


@pytest.mark.parametrize("block", [2, 3, 7])
def test_logits_in_blocks_equal_one_batch(shim: Shim, tiny_model: Path, prompt: tuple[int, ...], block: int) -> None:
    """Decoding a few tokens per call with the KV cache gives the rows of one batch: on this F32
    model llama.cpp's kernels give any run of 2 or more tokens exactly a longer run's rows."""
    tokens = prompt * 4
    whole, _ = shim.logits(tiny_model, tokens)
    seen: list[int] = []
    blocked, meta = shim.logits(tiny_model, tokens, block=block, progress=seen.append)
    assert meta["block"] == block and meta["n_decode_calls"] == -(-len(tokens) // block)
    assert meta["n_ubatch"] == block
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-5)
    assert seen == [min(n, len(tokens)) for n in range(block, len(tokens) + block, block)]
    assert meta["pieces_hex"] and len(meta["pieces_hex"]) == len(tokens)


def test_logits_in_blocks_stream_to_the_file(shim: Shim, tiny_model: Path, prompt: tuple[int, ...], work: Path) -> None:
    """The rows arrive in the file block by block and the array comes back as a memory map."""
    tokens = prompt * 8
    array, meta = shim.logits(tiny_model, tokens, block=4, out_dir=work / "blocked")
    assert isinstance(array, np.memmap) and array.shape[0] == len(tokens)
    assert meta["n_nonfinite"] == 0 and np.isfinite(array).all()
