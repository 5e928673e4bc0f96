"""`info`, `tokenize` and `detokenize` against the real pinned llama.cpp."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_crossval.reference.client import Shim
from tests.gguf_models import TinyLlamaSpec, spm_vocabulary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UNICODE_TEXTS = ("héllo wörld — 你好 🙂", "Ünïcödé 🦙 llama.cpp\n\ttabs and  spaces", "日本語のテキスト")


def test_info_reports_the_synthetic_model(shim: Shim, tiny_model: Path) -> None:
    spec = TinyLlamaSpec()
    n_vocab = len(spm_vocabulary()[0])
    info = shim.info(tiny_model, load_weights=True)
    assert info["architecture"] == "llama"
    assert info["weights_loaded"] is True
    assert (info["vocab_size"], info["context_length"], info["n_layer"], info["n_embd"]) == (
        n_vocab,
        spec.context_length,
        spec.n_layer,
        spec.n_embd,
    )
    assert (info["n_head"], info["n_head_kv"]) == (spec.n_head, spec.n_head_kv)
    kv_dim = spec.head_dim * spec.n_head_kv
    per_layer = 2 * spec.n_embd + 2 * spec.n_embd**2 + 2 * kv_dim * spec.n_embd + 3 * spec.n_ff * spec.n_embd
    assert info["n_params"] == 2 * n_vocab * spec.n_embd + spec.n_embd + spec.n_layer * per_layer


def test_info_loads_a_vocabulary_only_file(shim: Shim, spm_vocab: Path) -> None:
    info = shim.info(spm_vocab)
    assert info["weights_loaded"] is False
    assert info["vocab_type"] == "spm"
    assert info["vocab_size"] == 32000
    assert info["bos"] == 1


def _expected_tokenizations(vocab: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's own tokenizer fixtures: texts separated by a marker line, one line of ids each."""
    separator = "\n__ggml_vocab_test__\n"
    raw = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8")
    texts = raw.split(separator)
    if raw.endswith(separator):
        texts.pop()  # tests/test-tokenizer-0.cpp stops at the last separator
    lines = vocab.with_name(vocab.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines)
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines, strict=True)]


@pytest.mark.parametrize("vocab_name", ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"])
def test_tokenize_matches_llama_cpp_fixtures(shim: Shim, llama_source: Path, vocab_name: str) -> None:
    vocab = llama_source / "models" / vocab_name
    cases = _expected_tokenizations(vocab)
    assert len(cases) > 20
    mismatches = []
    for text, expected in cases:
        got = shim.tokenize(vocab, text, add_bos=False, parse_special=False).tokens
        if list(got) != expected:
            mismatches.append((text, expected, got))
    assert not mismatches


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trips_through_tokenize_and_detokenize(shim: Shim, spm_vocab: Path, text: str) -> None:
    plain = shim.tokenize(spm_vocab, text, add_bos=False, parse_special=False)
    assert shim.detokenize(spm_vocab, plain.tokens).text == text

    with_bos = shim.tokenize(spm_vocab, text, add_bos=True, parse_special=False)
    assert with_bos.tokens[0] == 1
    assert with_bos.tokens[1:] == plain.tokens
    assert with_bos.pieces[0] == b"<s>"
    # Pieces are exact bytes, even where a token is part of a character.
    joined = b"".join(plain.pieces).decode("utf-8")
    assert joined.strip() == text.strip()


def test_pieces_can_be_partial_utf8(shim: Shim, spm_vocab: Path) -> None:
    result = shim.tokenize(spm_vocab, "🙂", add_bos=False, parse_special=False)
    partial = [p for p in result.pieces if p and not _is_utf8(p)]
    assert partial, "the emoji should be split into byte tokens"
    assert b"".join(result.pieces).strip() == "🙂".encode()
    assert "\ufffd" in result.metadata["pieces"]  # the JSON string form stays valid


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
