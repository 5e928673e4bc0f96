"""Tiny, real GGUF models for tests, written with the ``gguf`` package.

The files are complete enough for llama.cpp to load and run (research notes: GGUFWriter wrote
F32 ``llama`` models with a vocabulary that llama.cpp loaded). Everything is derived from a
seed, so the same call writes the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2

# Word pieces after the 256 byte tokens. Single characters first so every merge SPM tries
# has its parts, then a few merges that make common English text short.
_CHARACTERS = list("▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()")
_MERGES_TEXT = (
    "▁t ▁the he in er an on re ▁a ▁h el ll lo llo ello ▁hello ▁w or ld orld ▁world ▁s is ▁is ▁i ▁c "
    "at ▁cat ▁o ▁of ▁in ▁to en es ing ▁th ▁and nd ▁an it ▁it"
)

# GGUF token types (llama.cpp src/llama-vocab.cpp): 1 normal, 2 unknown, 3 control, 6 byte.
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6


@dataclass(frozen=True, kw_only=True)
class TinyLlamaSpec:
    """Hyperparameters of the synthetic ``llama`` model."""

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    context_length: int = 256
    rope_freq_base: float = 10000.0
    rms_eps: float = 1e-5
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def spm_vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of a small SentencePiece (``llama``) vocabulary."""
    tokens = list(SPECIAL_TOKENS)
    types = [_UNKNOWN, _CONTROL, _CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_BYTE] * 256
    pieces = _CHARACTERS + _MERGES_TEXT.split()
    tokens += pieces
    types += [_NORMAL] * len(pieces)
    # SPM merges the pair with the highest score first; later (longer) merges rank lower
    # than the characters they are made of, like a real trained vocabulary.
    scores = [0.0] * (len(SPECIAL_TOKENS) + 256) + [-float(i) for i in range(len(pieces))]
    assert len(set(tokens)) == len(tokens), "duplicate token in the synthetic vocabulary"
    return tokens, scores, types


def write_llama_model(path: Path, *, spec: TinyLlamaSpec | None = None) -> Path:
    """Write a tiny F32 ``llama`` model with an SPM vocabulary to ``path``; return ``path``.

    Weights are small random values (seeded) so logits are finite and differ across
    positions; norms are close to 1.
    """
    import gguf

    spec = spec or TinyLlamaSpec()
    tokens, scores, types = spm_vocabulary()
    n_vocab = len(tokens)
    rng = np.random.default_rng(spec.seed)

    def matrix(rows: int, cols: int, scale: float) -> np.ndarray:
        # numpy shape (rows, cols) is GGUF ne = (cols, rows): rows are output features.
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(spec.n_embd)).astype(np.float32)

    kv_dim = spec.head_dim * spec.n_head_kv
    tensors: list[tuple[str, np.ndarray]] = [("token_embd.weight", matrix(n_vocab, spec.n_embd, 0.5))]
    for i in range(spec.n_layer):
        tensors += [
            (f"blk.{i}.attn_norm.weight", norm()),
            (f"blk.{i}.attn_q.weight", matrix(spec.n_embd, spec.n_embd, 0.15)),
            (f"blk.{i}.attn_k.weight", matrix(kv_dim, spec.n_embd, 0.15)),
            (f"blk.{i}.attn_v.weight", matrix(kv_dim, spec.n_embd, 0.15)),
            (f"blk.{i}.attn_output.weight", matrix(spec.n_embd, spec.n_embd, 0.1)),
            (f"blk.{i}.ffn_norm.weight", norm()),
            (f"blk.{i}.ffn_gate.weight", matrix(spec.n_ff, spec.n_embd, 0.15)),
            (f"blk.{i}.ffn_up.weight", matrix(spec.n_ff, spec.n_embd, 0.15)),
            (f"blk.{i}.ffn_down.weight", matrix(spec.n_embd, spec.n_ff, 0.1)),
        ]
    tensors += [("output_norm.weight", norm()), ("output.weight", matrix(n_vocab, spec.n_embd, 0.3))]

    def fill(writer: gguf.GGUFWriter) -> None:
        writer.add_name("shim-test-tiny-llama")
        writer.add_context_length(spec.context_length)
        writer.add_embedding_length(spec.n_embd)
        writer.add_block_count(spec.n_layer)
        writer.add_feed_forward_length(spec.n_ff)
        writer.add_head_count(spec.n_head)
        writer.add_head_count_kv(spec.n_head_kv)
        writer.add_rope_dimension_count(spec.head_dim)
        writer.add_rope_freq_base(spec.rope_freq_base)
        writer.add_layer_norm_rms_eps(spec.rms_eps)
        writer.add_file_type(0)  # LLAMA_FTYPE_ALL_F32
        writer.add_vocab_size(n_vocab)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_unk_token_id(UNK_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        for name, array in tensors:
            writer.add_tensor(name, array)

    return _write(path, "llama", fill)


def write_unknown_architecture_model(path: Path, *, architecture: str = "shim-test-no-such-arch") -> Path:
    """Write a well-formed GGUF whose architecture no llama.cpp knows; return ``path``."""
    import gguf

    tokens, scores, types = spm_vocabulary()

    def fill(writer: gguf.GGUFWriter) -> None:
        writer.add_context_length(64)
        writer.add_block_count(1)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))

    return _write(path, architecture, fill)


def _write(path: Path, architecture: str, fill: Callable[[Any], None]) -> Path:
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(tmp, architecture)
    try:
        fill(writer)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path
