"""The NumPy reference engine: a GGUF model, its hyperparameters, and a forward pass.

:func:`load_engine` opens and validates a model (architecture, required tensors and their
shapes, decodable tensor types) before any weight is dequantised, so a bad model fails with one
:class:`BadInput` sentence instead of a numpy traceback halfway through.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.archs import Architecture, architecture_of
from bitnet_crossval.crossval.engine.faults import check_fault_applies, fault_site, positions_needed
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.graph import MASK_AHEAD_FAULT, KvCache, LogitsOut, Run, project_output
from bitnet_crossval.crossval.engine.hparams import HParams, describe, read_hparams
from bitnet_crossval.crossval.engine.options import EngineOptions
from bitnet_crossval.crossval.engine.trace import TraceRecorder, TraceSite
from bitnet_crossval.errors import BadInput

F32Array = npt.NDArray[np.float32]

# Optional tensors a graph reads when present (llama.cpp loads them with TENSOR_NOT_REQUIRED).
_OPTIONAL_SUFFIXES = (".bias", ".scale")

DEFAULT_BLOCK = 256
"""Positions :meth:`Engine.evaluate` runs through the layers at once (llama.cpp's micro-batch)."""

OutT = TypeVar("OutT", bound="npt.NDArray[np.float32] | LogitsOut")

Progress = Callable[[float], None]
"""Told how many positions are done so far (a fraction while the output matrix is applied)."""


class Engine:
    """Forward passes over one model. Not thread-safe (weights are cached on first use)."""

    def __init__(self, model: GGUFModelFile, options: EngineOptions | None = None) -> None:
        self.model = model
        self.options = options or EngineOptions()
        self.architecture: Architecture = architecture_of(model.architecture)
        self.hparams: HParams = read_hparams(model, self.architecture)
        if self.options.fault is not None:
            check_fault_applies(self.options.fault, self.hparams)
        self._faulted: dict[str, F32Array] = {}
        self._shapes = self.architecture.tensor_shapes(self.hparams, model.has_tensor)
        self._required = list(self._shapes)
        for name in self._required:
            model.info(name)  # BadInput naming the first missing tensor
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
        logits = self.architecture.forward(Run(self, ids, trace))
        return np.ascontiguousarray(logits, dtype=np.float32)

    @overload
    def evaluate(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer],
        *,
        out: None = None,
        block: int = DEFAULT_BLOCK,
        progress: Progress | None = None,
    ) -> npt.NDArray[np.float32]: ...

    @overload
    def evaluate(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer],
        *,
        out: OutT,
        block: int = DEFAULT_BLOCK,
        progress: Progress | None = None,
    ) -> OutT: ...

    def evaluate(
        self,
        tokens: Sequence[int] | npt.NDArray[np.integer],
        *,
        out: npt.NDArray[np.float32] | LogitsOut | None = None,
        block: int = DEFAULT_BLOCK,
        progress: Progress | None = None,
    ) -> npt.NDArray[np.float32] | LogitsOut:
        """The logits of :meth:`forward` (the same values up to float rounding), evaluated as
        llama.cpp evaluates a long sequence: ``block`` positions at a time through the layers,
        each block attending to the keys and values the earlier ones left in a KV cache.

        Memory stays bounded by the block, not by the sequence: the hidden states at the output
        (``n_embd`` floats a position) and the KV cache (a sliding-window layer keeps only its
        window) grow with it, and the logits go to ``out`` (``[n_tokens, n_vocab]`` float32: an
        array, or a :class:`~.graph.LogitsOut` such as a file written by pieces) as the output
        matrix is applied slab by slab after the last block. Without ``out`` an array is
        allocated and returned. ``progress`` hears the positions done: a position counts half
        once through the layers and whole when its logits are written.
        """
        ids = self._check_tokens(tokens)
        n = int(ids.shape[0])
        if out is None:
            out = np.empty((n, self.n_vocab), dtype=np.float32)
        if isinstance(out, np.ndarray) and (out.shape != (n, self.n_vocab) or out.dtype != np.float32):
            raise ValueError(f"out is {out.dtype} {out.shape}, the logits are float32 {(n, self.n_vocab)}")
        if self.options.fault is not None and self.options.fault.name == MASK_AHEAD_FAULT.name:
            block = n  # each position also sees the next one: a block boundary would hide it
        block = max(1, block)
        cache = KvCache(capacity=n)
        hidden: npt.NDArray[np.float32] | None = None
        name = ""
        for start in range(0, n, block):
            stop = min(n, start + block)
            run = Run(self, ids[start:stop], None, start=start, cache=cache, defer_output=True)
            self.architecture.forward(run)
            assert run.hidden is not None, f"{self.architecture.NAME}'s forward pass never reached Run.output"
            if hidden is None:
                hidden = np.empty((n, run.hidden.shape[1]), dtype=np.float32)
                name = run.output_name
            hidden[start:stop] = run.hidden
            if progress is not None:
                progress(stop / 2)
        assert hidden is not None
        del cache

        def on_slab(done: int, total: int) -> None:
            if progress is not None:
                progress(n / 2 + n * done / (2 * total))

        project_output(self, hidden, name, out, on_slab=on_slab)
        return out

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

    def fault_positions(self) -> int | None:
        """How many positions a run needs for the configured fault to show (None: any run)."""
        if self.options.fault is None:
            return None
        return positions_needed(self.options.fault, self.hparams)

    def preload(self, stop: threading.Event | None = None) -> float:
        """Dequantise every weight now (not a streamed output matrix); returns the seconds it took.

        ``stop``, when set, ends it early (between two weights): what is left is dequantised
        on first use, as without a preload."""
        started = time.perf_counter()
        for name in self._preloaded():
            if stop is not None and stop.is_set():
                break
            self.weight(name)
        return time.perf_counter() - started

    def preload_bytes(self) -> int:
        """The memory :meth:`preload` fills: every weight it dequantises, as float32."""
        return sum(4 * self.model.info(name).n_elements for name in self._preloaded())

    def _preloaded(self) -> list[str]:
        streamed = {"token_embd.weight", "output.weight"} if self.options.output_weights == "stream" else set()
        optional = [n for n in self.model.tensors if n.endswith(_OPTIONAL_SUFFIXES) or n == "rope_freqs.weight"]
        return [*(n for n in self._required if n not in streamed), *optional]

    def describe(self) -> dict[str, Any]:
        """What was computed, for a report's provenance."""
        fault = self.options.fault
        return {
            "engine": "numpy-reference",
            "model": str(self.model.path),
            **describe(self.hparams),
            **self.architecture.describe(self.hparams, self.options),
            "kv_cache": self.options.kv_cache,
            "emulate_activation_quant": self.options.emulate_activation_quant,
            "gelu_fp16_table": self.options.gelu_fp16_table,
            "output_weights": self.options.output_weights,
            "fault": None if fault is None else {"name": fault.name, "value": fault.magnitude},
            "tensor_types": sorted({info.type_name for info in self.model.tensors.values()}),
        }

    # --- weights ---

    def weight(self, name: str) -> F32Array:
        """A weight as float32, as the active fault changes it (if it changes weights)."""
        fault = self.options.fault
        change = fault.spec.change_weight if fault is not None else None
        if fault is None or change is None:
            return self.model.weight(name)
        faulty = self._faulted.get(name)
        if faulty is None:
            original = self.model.weight(name)
            changed = change(name, original, fault.magnitude)
            faulty = original if changed is None else changed
            self._faulted[name] = faulty
        return faulty

    # --- validation ---

    def _check_shapes(self) -> None:
        for name, ne in self._shapes.items():
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


def load_engine(path: Path | str, options: EngineOptions | None = None) -> Engine:
    """Open a GGUF model for the NumPy reference engine (weights are dequantised on first use)."""
    return Engine(GGUFModelFile(Path(path)), options)
