"""Deterministic synthetic GGUF models of the registered architectures, for cross-validation.

The models are small (a few layers, n_embd 256) so a test runs in seconds, but they are built
like real ones where it matters to a cross-validation:

* a real vocabulary, copied key by key from a llama.cpp vocabulary file (``tokenizer.*``), so
  the reference tokenises and detokenises as it would for a real model;
* grouped-query attention (fewer K/V heads than query heads, more than one K/V head, so a
  wrong head mapping shows); for gemma3 a sliding window shorter than a test sequence, SWA and
  global layers mixed, and a head size that differs from n_embd / n_head;
* weights scaled like a trained model's: embeddings small (so RMSNorm's epsilon matters),
  attention scores of order one (softmax neither uniform nor one-hot), logits spread over a
  few units; bitnet weights ternary times one scale per tensor.

This module is the machinery every architecture shares: the random stream, the keys every
model has, the vocabulary copy and the tensor writing. What is an architecture's own (its
default spec, its layers' weights, its metadata keys) is declared by its module under
:mod:`bitnet_crossval.crossval.engine.archs` (``SYNTHETIC``).

The same arguments always write the same bytes: every number comes from ``seed``, and the
float weights do not depend on ``tensor_type`` (a Q4_0 model is the F32 model quantised).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.archs import Architecture, find_architecture, synthetic_architectures
from bitnet_crossval.crossval.engine.archs.synthetic_model import SyntheticModel, SyntheticSpec, Weight
from bitnet_crossval.crossval.engine.gguf_file import I2_S, GGUFModelFile
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util import i2s

__all__ = [
    "TENSOR_TYPES",
    "TERNARY_TYPES",
    "UPSTREAM_TENSOR_TYPES",
    "Arch",
    "SyntheticSpec",
    "TensorType",
    "default_spec",
    "write_synthetic_model",
]

Arch = str
"""A registered architecture's name, or one of the ``general.architecture`` names it runs."""
TensorType = Literal["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "TQ1_0", "TQ2_0", "I2_S"]

TENSOR_TYPES: tuple[TensorType, ...] = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "TQ1_0", "TQ2_0", "I2_S")
# Types llama.cpp upstream loads (I2_S is microsoft/BitNet's only).
UPSTREAM_TENSOR_TYPES: tuple[TensorType, ...] = TENSOR_TYPES[:-1]
TERNARY_TYPES = frozenset({"TQ1_0", "TQ2_0", "I2_S"})

# llama_ftype values for general.file_type (include/llama.h).
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37, "I2_S": 40}

F32Array = npt.NDArray[np.float32]


def _synthetic(arch: Arch) -> tuple[Architecture, SyntheticModel]:
    found = find_architecture(arch)
    if found is None or found.SYNTHETIC is None:
        raise BadInput(
            f"no synthetic model for architecture {arch!r}",
            next_step=f"use one of: {', '.join(synthetic_architectures())} (or one of the GGUF names they run)",
        )
    return found, found.SYNTHETIC


def default_spec(arch: Arch) -> SyntheticSpec:
    """The spec the architecture's synthetic model is written with unless told otherwise."""
    return _synthetic(arch)[1].spec


def write_synthetic_model(
    path: Path,
    *,
    arch: Arch,
    tensor_type: str = "F32",
    vocab: Path,
    seed: int = 0,
    spec: SyntheticSpec | None = None,
    name: str | None = None,
) -> Path:
    """Write a synthetic model to ``path`` (atomically) and return ``path``.

    ``arch`` is a registered architecture with a synthetic model, or one of the
    ``general.architecture`` names it runs (the name written into the file). ``tensor_type``
    is the type of the 2-D weight matrices (norms stay F32): F32, F16, BF16, Q8_0, Q4_0,
    Q5_0, TQ1_0, TQ2_0, or I2_S (bitnet only; the file is then a microsoft/BitNet
    ``bitnet-b1.58`` model, which upstream llama.cpp cannot load). With a ternary type the
    projections of every architecture are ternary times a per-tensor scale; the token embedding
    is then F16. ``vocab`` is a GGUF holding ``tokenizer.*`` keys (llama.cpp's
    ``models/ggml-vocab-*.gguf``).
    """
    import gguf

    if tensor_type not in TENSOR_TYPES:
        raise BadInput(
            f"tensor type {tensor_type!r} cannot be written here",
            next_step=f"use one of: {', '.join(TENSOR_TYPES)}",
        )
    found, synthetic = _synthetic(arch)
    architecture = _file_architecture(arch, found, synthetic, tensor_type)
    spec = spec or synthetic.spec
    _check_spec(spec, synthetic)

    vocabulary = _read_vocabulary(Path(vocab))
    n_vocab = vocabulary.n_tokens
    ternary = synthetic.ternary or tensor_type in TERNARY_TYPES
    weights = _weights(spec, synthetic, n_vocab=n_vocab, seed=seed, ternary=ternary)

    def fill(writer: Any) -> None:
        a = architecture
        writer.add_string("general.name", name or f"synthetic-{a}-{tensor_type.lower()}-seed{seed}")
        writer.add_uint32("general.file_type", _FILE_TYPES[tensor_type])
        writer.add_uint32(f"{a}.context_length", spec.context_length)
        writer.add_uint32(f"{a}.embedding_length", spec.n_embd)
        writer.add_uint32(f"{a}.block_count", spec.n_layer)
        writer.add_uint32(f"{a}.feed_forward_length", spec.n_ff)
        writer.add_uint32(f"{a}.attention.head_count", spec.n_head)
        writer.add_uint32(f"{a}.attention.head_count_kv", spec.n_head_kv)
        writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", spec.rms_eps)
        writer.add_float32(f"{a}.rope.freq_base", spec.rope_base)
        writer.add_uint32(f"{a}.rope.dimension_count", spec.head_dim)
        writer.add_uint32(f"{a}.vocab_size", n_vocab)
        synthetic.metadata(writer, spec, f"{a}.")
        vocabulary.write(writer)
        for tensor_name, array, ternary_scale in weights:
            _add_tensor(writer, tensor_name, array, ternary_scale, tensor_type=tensor_type, spec=spec)

    return _write(Path(path), architecture, fill, gguf)


def _file_architecture(arch: Arch, found: Architecture, synthetic: SyntheticModel, tensor_type: str) -> str:
    """The ``general.architecture`` to write: the one asked for, unless the tensor type needs another."""
    other = synthetic.file_architectures.get(tensor_type)
    if other is not None:
        return other
    if tensor_type not in UPSTREAM_TENSOR_TYPES:
        owners = [n for n in synthetic_architectures() if tensor_type in _synthetic(n)[1].file_architectures]
        raise BadInput(
            f"{tensor_type} is a {' or '.join(owners)}-only format",
            next_step=f"use a {' or '.join(owners)} architecture for {tensor_type}",
        )
    return arch if arch in found.GGUF_NAMES else found.GGUF_NAMES[0]


# --- weights ---


class _Draw:
    """The random stream of one model, consumed in one fixed order whatever the options."""

    def __init__(self, seed: int, *, ternary: bool) -> None:
        self.rng = np.random.default_rng(seed)
        self.ternary = ternary

    def gaussian(self, rows: int, cols: int, std: float) -> F32Array:
        return (self.rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def matrix(self, rows: int, cols: int, std: float) -> tuple[F32Array, float | None]:
        """A projection whose outputs spread about ``std * sqrt(cols)`` for unit inputs.

        Ternary: values in {-1, 0, +1} (P(0) = 1/3, variance 2/3) and a separate scale restoring
        the intended spread, so the writer can bake the scale in, put it in an I2_S tail, or
        write it as a ``.scale`` tensor.
        """
        values = self.gaussian(rows, cols, 1.0)
        if not self.ternary:
            return (values * np.float32(std)).astype(np.float32), None
        codes = np.where(values > 0.43, 1.0, np.where(values < -0.43, -1.0, 0.0)).astype(np.float32)
        return codes, float(np.float32(std / math.sqrt(2.0 / 3.0)))

    def norm(self, n: int, *, centre: float = 1.0, spread: float = 0.1) -> F32Array:
        return (centre + spread * self.rng.standard_normal(n)).astype(np.float32)


def _weights(spec: SyntheticSpec, synthetic: SyntheticModel, *, n_vocab: int, seed: int, ternary: bool) -> list[Weight]:
    draw = _Draw(seed, ternary=ternary)
    d = spec.n_embd
    # Embeddings: small, as in trained models (RMSNorm's epsilon then matters). Tied models read
    # logits off the embedding: a token's own logit stands out unless the layers' contributions
    # outweigh its embedding in the residual stream, so tied models get a small embedding and a
    # final norm that brings the logits' spread back to ~2.5 (gemma3, whose embedding is scaled
    # by sqrt(n_embd), also gets large post-norms).
    out: list[Weight] = [("token_embd.weight", draw.gaussian(n_vocab, d, synthetic.embedding_std), None)]
    for il in range(spec.n_layer):
        out += synthetic.layer(draw, spec, il)
    final_norm = synthetic.output_norm
    out.append(("output_norm.weight", draw.norm(d, centre=final_norm, spread=0.1 * final_norm), None))
    out += synthetic.output(draw, spec, n_vocab)
    return out


def _add_tensor(
    writer: Any,
    name: str,
    values: F32Array,
    ternary_scale: float | None,
    *,
    tensor_type: str,
    spec: SyntheticSpec,
) -> None:
    import gguf

    if values.ndim == 1:
        writer.add_tensor(name, values.astype(np.float32))
        return
    if ternary_scale is not None and tensor_type == "I2_S":
        raw = i2s.encode(values, ternary_scale)
        # gguf-py knows no type 36: hand it the bytes as int8 so it keeps the shape as given.
        writer.add_tensor(name, raw.view(np.int8), raw_shape=values.shape, raw_dtype=I2_S)
        return
    if ternary_scale is not None and spec.scale_tensors:
        writer.add_tensor(name.replace(".weight", ".scale"), np.array([ternary_scale], dtype=np.float32))
        dense = values
    elif ternary_scale is not None:
        dense = (values * np.float32(ternary_scale)).astype(np.float32)
    else:
        dense = values
    stored = tensor_type
    if tensor_type in TERNARY_TYPES and name == "token_embd.weight":
        stored = "F16"  # the embedding of a ternary model is not ternary
    if stored == "I2_S":
        stored = "F32"  # only the ternary projections are I2_S; other matrices (none today) stay float
    if stored == "F32":
        writer.add_tensor(name, dense)
    elif stored == "F16":
        writer.add_tensor(name, dense.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[stored]
        writer.add_tensor(name, gguf.quants.quantize(dense, qtype), raw_dtype=qtype)


def _check_spec(spec: SyntheticSpec, synthetic: SyntheticModel) -> None:
    problems = []
    if spec.n_head % spec.n_head_kv:
        problems.append("n_head must be a multiple of n_head_kv")
    sizes = (("n_embd", spec.n_embd), ("n_ff", spec.n_ff), ("n_head*head_dim", spec.n_head * spec.head_dim))
    for label, value in sizes:
        if value % 256:
            problems.append(f"{label} ({value}) must be a multiple of 256 (the largest block size written here)")
    problems += synthetic.check(spec)
    if problems:
        raise BadInput("invalid synthetic model spec: " + "; ".join(problems), next_step="fix the SyntheticSpec")


# --- vocabulary ---


@dataclass(frozen=True)
class _Vocabulary:
    """The ``tokenizer.*`` keys of a vocabulary file, with their exact GGUF value types."""

    entries: tuple[tuple[str, Any, Any, Any], ...]  # key, value, type, sub_type
    n_tokens: int

    def write(self, writer: Any) -> None:
        for key, value, vtype, sub_type in self.entries:
            writer.add_key_value(key, value, vtype, sub_type=sub_type)


def _read_vocabulary(path: Path) -> _Vocabulary:
    from gguf import GGUFValueType

    model = GGUFModelFile(path)
    entries: list[tuple[str, Any, Any, Any]] = []
    n_tokens = model.array_length("tokenizer.ggml.tokens")
    if not n_tokens:
        raise BadInput(
            f"{path} holds no tokenizer.ggml.tokens array, so it is no vocabulary",
            next_step="pass one of llama.cpp's models/ggml-vocab-*.gguf files",
        )
    for key in model.metadata_keys():
        if not key.startswith("tokenizer."):
            continue
        field = model.raw_field(key)
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub_type = field.types[-1] if len(field.types) > 1 else GGUFValueType.STRING
            if sub_type == GGUFValueType.STRING:
                value: Any = model.string_array_bytes(key)
            else:
                array = model.numeric_array(key)
                assert array is not None
                value = array.tolist()
            entries.append((key, value, vtype, sub_type))
        elif vtype == GGUFValueType.STRING:
            entries.append((key, model.get_str(key), vtype, None))
        else:
            entries.append((key, model.get(key), vtype, None))
    return _Vocabulary(entries=tuple(entries), n_tokens=n_tokens)


def _write(path: Path, architecture: str, fill: Callable[[Any], None], gguf: Any) -> Path:
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
