"""The NumPy reference engine: a GGUF model, its hyperparameters, and a forward pass.

:func:`load_engine` opens and validates a model (architecture, required tensors and their
shapes, decodable tensor types) before any weight is dequantised, so a bad model fails with one
:class:`BadInput` sentence instead of a numpy traceback halfway through.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine import bitnet, gemma3, llama
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.graph import Run
from bitnet_crossval.crossval.engine.hparams import HParams, describe, read_hparams
from bitnet_crossval.crossval.engine.options import (
    BitnetActivation,
    EngineOptions,
    check_fault_applies,
    fault_site,
)
from bitnet_crossval.crossval.engine.trace import TraceRecorder, TraceSite
from bitnet_crossval.errors import BadInput

F32Array = npt.NDArray[np.float32]

# The BitLinear (ternary) projections of a bitnet layer.
_TERNARY = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# Optional tensors a graph reads when present (llama.cpp loads them with TENSOR_NOT_REQUIRED).
_OPTIONAL_SUFFIXES = (".bias", ".scale")


class Engine:
    """Forward passes over one model. Not thread-safe (weights are cached on first use)."""

    def __init__(self, model: GGUFModelFile, options: EngineOptions | None = None) -> None:
        self.model = model
        self.options = options or EngineOptions()
        self.hparams: HParams = read_hparams(model)
        if self.options.fault is not None:
            check_fault_applies(self.options.fault, self.hparams)
        self.bitnet_activation: BitnetActivation | None = None
        if self.hparams.family == "bitnet":
            self.bitnet_activation = self.options.bitnet_activation or (
                "silu" if self.hparams.architecture == "bitnet" else "relu2"
            )
        self._faulted: dict[str, F32Array] = {}
        self._required = self._required_tensors()
        self._check_shapes()
        optional = [
            name
            for name in model.tensors
            if name.endswith(_OPTIONAL_SUFFIXES) or name in {"output.weight", "rope_freqs.weight"}
        ]
        model.check_decodable([*self._required, *optional])

    # --- public API ---

    @property
    def n_vocab(self) -> int:
        return self.hparams.n_vocab

    def forward(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer],
        *,
        trace: TraceRecorder | None = None,
    ) -> F32Array:
        """Logits ``[n_tokens, n_vocab]`` (float32) of every position, evaluated causally in one pass.

        ``trace`` receives the intermediates under llama.cpp's names (see :mod:`.trace`).
        """
        ids = self._check_tokens(tokens)
        run = Run(self, ids, trace)
        family = self.hparams.family
        if family == "llama":
            logits = llama.forward(run)
        elif family == "gemma3":
            logits = gemma3.forward(run)
        else:
            assert self.bitnet_activation is not None
            logits = bitnet.forward(run, activation=self.bitnet_activation)
        return np.ascontiguousarray(logits, dtype=np.float32)

    def trace_names(self) -> list[str]:
        """Every key a full trace holds, in execution order (from a one-token pass)."""
        recorder = TraceRecorder(positions=[0])
        self.forward([0], trace=recorder)
        return recorder.keys()

    def fault_site(self) -> TraceSite | None:
        """The first traced tensor the configured fault changes (None without a fault)."""
        if self.options.fault is None:
            return None
        return fault_site(self.options.fault, self.hparams)

    def preload(self) -> float:
        """Dequantise every weight now (not a streamed output matrix); returns the seconds it took."""
        started = time.perf_counter()
        streamed = {"token_embd.weight", "output.weight"} if self.options.output_weights == "stream" else set()
        for name in self._required:
            if name not in streamed:
                self.weight(name)
        for name in self.model.tensors:
            optional = name.endswith(_OPTIONAL_SUFFIXES) or name == "rope_freqs.weight"
            if optional or (name == "output.weight" and name not in streamed and self._reads_output()):
                self.weight(name)
        return time.perf_counter() - started

    def _reads_output(self) -> bool:
        return self.hparams.family != "bitnet" and self.model.has_tensor("output.weight")

    def describe(self) -> dict[str, Any]:
        """What was computed, for a report's provenance."""
        fault = self.options.fault
        return {
            "engine": "numpy-reference",
            "model": str(self.model.path),
            **describe(self.hparams),
            "bitnet_activation": self.bitnet_activation,
            "kv_cache": self.options.kv_cache,
            "emulate_activation_quant": self.options.emulate_activation_quant,
            "gelu_fp16_table": self.options.gelu_fp16_table,
            "output_weights": self.options.output_weights,
            "fault": None if fault is None else {"name": fault.name, "value": fault.magnitude},
            "tensor_types": sorted({info.type_name for info in self.model.tensors.values()}),
        }

    # --- weights ---

    def weight(self, name: str) -> F32Array:
        """A weight as float32, with the ternary-scale fault applied when it is active."""
        fault = self.options.fault
        if fault is not None and fault.name == "ternary_scale" and _is_ternary(name):
            cached = self._faulted.get(name)
            if cached is None:
                assert fault.magnitude is not None
                cached = np.multiply(self.model.weight(name), np.float32(fault.magnitude), dtype=np.float32)
                self._faulted[name] = cached
            return cached
        return self.model.weight(name)

    # --- validation ---

    def _required_tensors(self) -> list[str]:
        hp = self.hparams
        names = ["token_embd.weight", "output_norm.weight"]
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            layer = [p + "attn_norm.weight", p + "attn_output.weight", p + "ffn_norm.weight"]
            layer += [p + "ffn_gate.weight", p + "ffn_up.weight", p + "ffn_down.weight"]
            if hp.family != "bitnet" and self.model.has_tensor(p + "attn_qkv.weight"):
                layer.append(p + "attn_qkv.weight")
            else:
                layer += [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"]
            if hp.family == "gemma3":
                layer += [p + "attn_q_norm.weight", p + "attn_k_norm.weight"]
                layer += [p + "post_attention_norm.weight", p + "post_ffw_norm.weight"]
            if hp.family == "bitnet":
                layer += [p + "attn_sub_norm.weight", p + "ffn_sub_norm.weight"]
            names += layer
        for name in names:
            self.model.info(name)  # BadInput naming the first missing tensor
        return names

    def _check_shapes(self) -> None:
        hp = self.hparams
        q_dim, kv_dim, v_dim = hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim, hp.n_head_kv * hp.head_dim_v
        expected: dict[str, tuple[int, ...]] = {"output_norm.weight": (hp.n_embd,)}
        if self.model.has_tensor("output.weight") and hp.family != "bitnet":
            expected["output.weight"] = (hp.n_embd, hp.n_vocab)
        for il in range(hp.n_layer):
            p = f"blk.{il}."
            expected |= {
                p + "attn_norm.weight": (hp.n_embd,),
                p + "attn_output.weight": (hp.n_head * hp.head_dim_v, hp.n_embd),
                p + "ffn_norm.weight": (hp.n_embd,),
                p + "ffn_gate.weight": (hp.n_embd, hp.n_ff),
                p + "ffn_up.weight": (hp.n_embd, hp.n_ff),
                p + "ffn_down.weight": (hp.n_ff, hp.n_embd),
            }
            if p + "attn_qkv.weight" in self._required:
                expected[p + "attn_qkv.weight"] = (hp.n_embd, q_dim + kv_dim + v_dim)
            else:
                expected |= {
                    p + "attn_q.weight": (hp.n_embd, q_dim),
                    p + "attn_k.weight": (hp.n_embd, kv_dim),
                    p + "attn_v.weight": (hp.n_embd, v_dim),
                }
            if hp.family == "gemma3":
                expected |= {
                    p + "attn_q_norm.weight": (hp.head_dim,),
                    p + "attn_k_norm.weight": (hp.head_dim,),
                    p + "post_attention_norm.weight": (hp.n_embd,),
                    p + "post_ffw_norm.weight": (hp.n_embd,),
                }
            if hp.family == "bitnet":
                expected |= {p + "attn_sub_norm.weight": (hp.n_embd,), p + "ffn_sub_norm.weight": (hp.n_ff,)}
        for name, ne in expected.items():
            actual = self.model.info(name).ne
            if actual != ne:
                raise BadInput(
                    f"the tensor {name} of {self.model.path} has shape {list(actual)}, "
                    f"its metadata implies {list(ne)} (corrupt or mislabelled model)",
                    next_step="check that the file is a complete model (re-convert it)",
                )

    def _check_tokens(self, tokens: Sequence[int] | npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise BadInput(
                "the engine needs a non-empty, one-dimensional sequence of integer token ids",
                next_step="pass token ids, e.g. from the reference's tokenizer",
            )
        bad = ids[(ids < 0) | (ids >= self.hparams.n_vocab)]
        if bad.size:
            raise BadInput(
                f"token id {int(bad[0])} is outside the model's vocabulary of {self.hparams.n_vocab}",
                next_step="tokenize with this model's vocabulary",
            )
        return ids.astype(np.int64)


def _is_ternary(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "blk" and parts[2] in _TERNARY and parts[3] == "weight"


def load_engine(path: Path | str, options: EngineOptions | None = None) -> Engine:
    """Open a GGUF model for the NumPy reference engine (weights are dequantised on first use)."""
    return Engine(GGUFModelFile(Path(path)), options)
