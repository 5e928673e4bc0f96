"""The building blocks every forward pass shares, mirroring llama.cpp's ``llm_graph_context``.

One :class:`Run` is one evaluation of one token sequence. Its helpers follow the helpers of
src/llama-graph.cpp (``build_norm``, ``build_qkv``, ``build_ffn``, ``build_attn``) closely
enough that the names they report are the names llama.cpp gives the same values.

The deliberate faults any graph can suffer are declared here, next to the one place each is
applied; an architecture lists the ones that apply to it (see :mod:`.faults`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine import ops
from bitnet_crossval.crossval.engine.faults import Fault, FaultName, FaultSpec
from bitnet_crossval.crossval.engine.hparams import HParams
from bitnet_crossval.crossval.engine.options import EngineOptions
from bitnet_crossval.crossval.engine.trace import TraceRecorder
from bitnet_crossval.errors import BadInput

if TYPE_CHECKING:
    from bitnet_crossval.crossval.engine.engine import Engine

F32Array = npt.NDArray[np.float32]


# --- the faults any graph can suffer ---


def _needs_grouped_heads(hp: HParams) -> None:
    heads = np.arange(hp.n_head)
    if np.array_equal(heads // hp.n_group, heads % hp.n_head_kv):
        raise BadInput(
            f"the fault 'gqa_mapping' changes nothing on a model with {hp.n_head} heads and "
            f"{hp.n_head_kv} K/V heads (both mappings agree)",
            next_step="use a model with grouped-query attention and more than one K/V head",
        )


def _needs_sliding_layers(hp: HParams) -> None:
    if hp.n_swa <= 0:
        families = ", ".join(sorted(SLIDING_WINDOW_FAULT.families))
        raise BadInput(
            f"the fault 'sliding_window' needs a model with sliding-window layers; {hp.architecture} here has none",
            next_step=f"use a model with attention.sliding_window set ({families})",
        )


# Positions past the model's window, beyond the first one whose window differs (position n_swa):
# each later position drops one more of the tokens the wider window still sees.
_PAST_WINDOW = 16


def _past_the_window(hp: HParams) -> int:
    """A window fault changes nothing before position ``n_swa``: a run must go past it."""
    return hp.n_swa + _PAST_WINDOW


ROPE_TYPE_FAULT = FaultSpec(
    name=FaultName("rope_type"),
    description="RoPE of the wrong variant: NEOX (halves) where the model needs NORM (pairs), and back",
)
ROPE_BASE_FAULT = FaultSpec(
    name=FaultName("rope_base"),
    description="RoPE base multiplied by a factor (every layer, sliding-window layers included)",
    default_value=2.0,
    value_meaning="factor applied to the rope base",
)
NORM_EPS_FAULT = FaultSpec(
    name=FaultName("norm_eps"),
    description="every RMSNorm uses a wrong epsilon",
    default_value=1e-2,
    value_meaning="the epsilon used instead of the model's",
)
SWAPPED_GATE_UP_FAULT = FaultSpec(
    name=FaultName("swapped_gate_up"),
    description="the FFN gate and up projections are swapped",
)
GQA_MAPPING_FAULT = FaultSpec(
    name=FaultName("gqa_mapping"),
    description="query head h reads K/V head h % n_head_kv instead of h // (n_head / n_head_kv)",
    check=_needs_grouped_heads,
)
MASK_AHEAD_FAULT = FaultSpec(
    name=FaultName("mask_ahead"),
    description="causal mask off by one: each position also attends to the next one",
)
MASK_NO_SELF_FAULT = FaultSpec(
    name=FaultName("mask_no_self"),
    description="causal mask off by one: a position does not attend to itself "
    "(position 0 then sees nothing and gets a zero attention output)",
)
ATTN_SCALE_FAULT = FaultSpec(
    name=FaultName("attn_scale"),
    description="the attention scale (of Q.K before the softmax) multiplied by a factor",
    default_value=1.25,
    value_meaning="factor applied to the attention scale",
)
FINAL_SOFTCAP_FAULT = FaultSpec(
    name=FaultName("final_softcap"),
    description="the final logits are soft-capped at a wrong value (a model without a cap gets one)",
    default_value=15.0,
    value_meaning="the cap used instead of the model's",
)
SLIDING_WINDOW_FAULT = FaultSpec(
    name=FaultName("sliding_window"),
    description="sliding-window layers use a wrong window",
    value_meaning="the window used instead of the model's (default: twice the model's)",
    check=_needs_sliding_layers,
    positions=_past_the_window,
)


def fault_window(fault: Fault, hp: HParams) -> int:
    """The window the ``sliding_window`` fault uses."""
    value = fault.magnitude
    return int(value) if value is not None else 2 * hp.n_swa


class LogitsOut(Protocol):
    """Where :func:`project_output` puts the logits: an array (:class:`ArrayOut`), or a file
    written by pieces (``util.npy_rows.NpyWriter``)."""

    def put(self, row: int, col: int, values: npt.NDArray[np.float32]) -> None:
        """``values`` (2-D) go to rows ``row..`` and columns ``col..``."""
        ...


class ArrayOut:
    def __init__(self, array: npt.NDArray[np.float32]) -> None:
        self.array = array

    def put(self, row: int, col: int, values: npt.NDArray[np.float32]) -> None:
        self.array[row : row + values.shape[0], col : col + values.shape[1]] = values


# The output matrix is read this many rows (vocabulary entries) at a time, and the logits of at
# most OUTPUT_ROWS_PER_STEP positions are computed against each slab at once.
OUTPUT_ROWS_PER_SLAB = 4096
OUTPUT_ROWS_PER_STEP = 256


def project_output(
    engine: Engine,
    x: F32Array,
    name: str,
    out: npt.NDArray[np.float32] | LogitsOut,
    *,
    on_slab: Callable[[int, int], None] | None = None,
) -> None:
    """The logits of the hidden states ``x`` (``[n, n_embd]``) through the matrix ``name`` into
    ``out`` (``[n, n_vocab]``), then what llama.cpp does to the logits themselves: NVFP4's
    ``output.scale`` and a final softcap (``tanh(logits / cap) * cap``, gemma's).

    With ``output_weights="stream"`` the matrix is dequantised one slab of rows at a time and
    never kept; a vocabulary-sized matrix costs its float32 copy otherwise (640 MiB for Gemma
    3's embedding, 2.7x its Q8_0 bytes). Either way every slab meets every position before the
    next slab is read, so the matrix is read once however many positions there are, and the
    logits are made :data:`OUTPUT_ROWS_PER_STEP` positions by a slab at a time.
    ``on_slab(done, total)`` follows the slabs.
    """
    model = engine.model
    info = model.info(name)
    if engine.options.emulate_activation_quant:
        x = ops.round_activations(x, info.type_name)
    n_rows, n_vocab = x.shape[0], info.shape[0]
    stream = engine.options.output_weights == "stream"
    scale = None
    if name == "output.weight" and info.type_name == "NVFP4" and model.has_tensor("output.scale"):
        scale = np.float32(engine.weight("output.scale").reshape(-1)[0])  # llama.cpp loads it for NVFP4 only
    cap = engine.hparams.final_logit_softcap
    fault = engine.options.fault
    if fault is not None and fault.name == FINAL_SOFTCAP_FAULT.name:  # gemma3 lists it; the cap is applied here
        cap = float(fault.magnitude or 0.0)
    whole = None if stream else engine.weight(name)
    if whole is not None and isinstance(out, np.ndarray) and on_slab is None:
        np.matmul(x, whole.T, out=out)  # one product, as a single forward pass has always made it
        _finish_logits(out, scale, cap)
        return
    target = ArrayOut(out) if isinstance(out, np.ndarray) else out
    slabs = range(0, n_vocab, OUTPUT_ROWS_PER_SLAB)
    for done, start in enumerate(slabs, start=1):
        stop = min(n_vocab, start + OUTPUT_ROWS_PER_SLAB)
        slab = whole[start:stop] if whole is not None else model.rows(name, np.arange(start, stop, dtype=np.int64))
        for first in range(0, n_rows, OUTPUT_ROWS_PER_STEP):
            logits = np.matmul(x[first : first + OUTPUT_ROWS_PER_STEP], slab.T)
            _finish_logits(logits, scale, cap)
            target.put(first, start, logits)
        if stream:
            model.release_file_pages(name, (start, stop))
        if on_slab is not None:
            on_slab(done, len(slabs))


def _finish_logits(logits: npt.NDArray[np.float32], scale: np.float32 | None, cap: float) -> None:
    """In place, element by element (so a slab gets what the whole array would)."""
    if scale is not None:
        np.multiply(logits, scale, out=logits, dtype=np.float32)
    if cap:
        np.multiply(logits, np.float32(1.0) / np.float32(cap), out=logits, dtype=np.float32)
        logits[...] = np.tanh(logits.astype(np.float64)).astype(np.float32)
        np.multiply(logits, np.float32(cap), out=logits, dtype=np.float32)


@dataclass(frozen=True)
class Qkv:
    q: F32Array  # [n_tokens, n_head, head_dim]
    k: F32Array  # [n_tokens, n_head_kv, head_dim]
    v: F32Array  # [n_tokens, n_head_kv, head_dim]


@dataclass
class LayerKv:
    """The keys and values one layer keeps, and the positions they belong to."""

    k: F32Array
    v: F32Array
    positions: npt.NDArray[np.int64]


class KvCache:
    """K and V of the positions evaluated so far, per layer: what llama.cpp's KV cache holds
    between the micro-batches of a long sequence.

    A sliding-window layer keeps only the keys its next queries can see (the window before the
    block's first position); any other layer keeps them all, in arrays of ``capacity`` positions
    made once, so a long sequence does not leave a trail of ever larger copies behind.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.capacity = capacity
        self.layers: dict[int, LayerKv] = {}
        self._full: dict[int, LayerKv] = {}
        self._held: dict[int, int] = {}

    def extend(
        self, il: int, k: F32Array, v: F32Array, positions: npt.NDArray[np.int64], *, window: int = 0
    ) -> LayerKv:
        """Layer ``il``'s keys and values for queries at ``positions``: the earlier ones a query
        of this block can see (all of them without a ``window``) and those of ``positions``."""
        held = self.layers.get(il)
        if window <= 0 and self.capacity:
            return self._append(il, k, v, positions)
        if held is None:
            current = LayerKv(k=k, v=v, positions=positions)
        else:
            keep = held.positions > int(positions[0]) - window if window > 0 else slice(None)
            current = LayerKv(
                k=np.concatenate([held.k[keep], k]),
                v=np.concatenate([held.v[keep], v]),
                positions=np.concatenate([held.positions[keep], positions]),
            )
        self.layers[il] = current
        return current

    def _append(self, il: int, k: F32Array, v: F32Array, positions: npt.NDArray[np.int64]) -> LayerKv:
        full = self._full.get(il)
        if full is None:
            full = LayerKv(
                k=np.empty((self.capacity, *k.shape[1:]), dtype=k.dtype),
                v=np.empty((self.capacity, *v.shape[1:]), dtype=v.dtype),
                positions=np.empty(self.capacity, dtype=np.int64),
            )
            self._full[il] = full
        start = self._held.get(il, 0)
        stop = start + k.shape[0]
        full.k[start:stop], full.v[start:stop], full.positions[start:stop] = k, v, positions
        self._held[il] = stop
        current = LayerKv(k=full.k[:stop], v=full.v[:stop], positions=full.positions[:stop])
        self.layers[il] = current
        return current

    def nbytes(self) -> int:
        return sum(int(kv.k.nbytes + kv.v.nbytes) for kv in self.layers.values())


class Run:
    """State of one forward pass: the engine, the tokens, the trace, the active fault.

    A pass over a block of a longer sequence starts at position ``start`` and attends to the
    keys of the earlier blocks held in ``cache`` (then it adds its own). With
    ``defer_output`` the pass stops before the output matrix: :meth:`output` keeps its input
    in :attr:`hidden` and returns it unchanged, and the engine projects the hidden states of
    every block at once afterwards (:func:`project_output`), so a vocabulary-sized matrix is
    read once per sequence rather than once per block.
    """

    def __init__(
        self,
        engine: Engine,
        tokens: npt.NDArray[np.int64],
        trace: TraceRecorder | None,
        *,
        start: int = 0,
        cache: KvCache | None = None,
        defer_output: bool = False,
    ) -> None:
        self.engine = engine
        self.hp: HParams = engine.hparams
        self.options: EngineOptions = engine.options
        self.fault: Fault | None = engine.options.fault
        self.tokens = tokens
        self.n_tokens = int(tokens.shape[0])
        self.positions = np.arange(start, start + self.n_tokens, dtype=np.int64)
        self.trace = trace
        self.cache = cache
        self.defer_output = defer_output
        self.hidden: F32Array | None = None
        """The input of the output matrix, kept when the output is deferred."""
        self.output_name = ""
        """The matrix :meth:`output` multiplies by (``output.weight`` or ``token_embd.weight``)."""
        eps = self.hp.rms_eps
        if self.faulty(NORM_EPS_FAULT.name):
            assert self.fault is not None and self.fault.magnitude is not None
            eps = self.fault.magnitude
        self.eps = eps
        self._rope_cache: dict[tuple[float, float], tuple[F32Array, F32Array]] = {}
        self._mask_cache: dict[tuple[int, int, int], npt.NDArray[np.bool_]] = {}

    def faulty(self, name: str) -> bool:
        return self.fault is not None and self.fault.name == name

    # --- tracing ---

    def rec(self, name: str, layer: int, value: F32Array) -> None:
        if self.trace is not None:
            self.trace.record(name, layer, value)

    # --- weights ---

    def w(self, name: str) -> F32Array:
        return self.engine.weight(name)

    def has(self, name: str) -> bool:
        return self.engine.model.has_tensor(name)

    def opt(self, name: str) -> F32Array | None:
        return self.engine.weight(name) if self.has(name) else None

    def matmul(self, x: F32Array, name: str) -> F32Array:
        """ggml_mul_mat(W, x): activations rounded as ggml does when emulation is on."""
        if self.options.emulate_activation_quant:
            x = ops.round_activations(x, self.engine.model.info(name).type_name)
        return ops.linear(x, self.w(name))

    def lora_mm(self, x: F32Array, base: str, *, scale: bool) -> F32Array:
        """build_lora_mm: the matmul, then the optional per-tensor ``.scale`` (shape {1})."""
        out = self.matmul(x, f"{base}.weight")
        if scale:
            s = self.opt(f"{base}.scale")
            if s is not None:
                out = np.multiply(out, s.reshape(-1)[0], dtype=np.float32)
        return out

    # --- norms ---

    def norm(self, x: F32Array, weight: str, il: int) -> F32Array:
        """build_norm(LLM_NORM_RMS) with the model's weight (already +1 for Gemma in GGUF).

        llama.cpp names the unweighted normalisation ``norm`` with the layer the graph passes
        (-1 for some norms inside a layer, e.g. gemma3's post-FFN norm); many nodes share that
        name, and the trace keeps the last.
        """
        normed = ops.rms_norm(x, self.eps)
        self.rec("norm", il, normed)
        return ops.f32(np.multiply(normed, self.w(weight), dtype=np.float32))

    # --- embeddings ---

    def embed(self) -> F32Array:
        """build_inp_embd: rows of token_embd (named ``embd``)."""
        x = self.engine.model.rows("token_embd.weight", self.tokens)
        # Each row read faults in its file pages (and their neighbours): over thousands of
        # distinct tokens that is much of a vocabulary-sized matrix, resident for nothing.
        self.engine.model.release_file_pages("token_embd.weight")
        self.rec("embd", -1, x)
        return x

    def output(self, x: F32Array, *, tied_only: bool = False) -> F32Array:
        """The lm head: ``output`` when the file has one (and the graph reads it), else token_embd;
        then what llama.cpp applies to the logits themselves (NVFP4's ``output.scale``, a final
        softcap). With :attr:`defer_output`, ``x`` itself (see the class)."""
        name = "token_embd.weight" if tied_only or not self.has("output.weight") else "output.weight"
        self.output_name = name
        if self.defer_output:
            self.hidden = x
            return x
        logits = np.empty((x.shape[0], self.engine.model.info(name).shape[0]), dtype=np.float32)
        project_output(self.engine, x, name, logits)
        return logits

    # --- attention ---
    # --- attention ---

    def qkv(self, x: F32Array, il: int) -> Qkv:
        """build_qkv: fused ``attn_qkv`` or separate Q/K/V, each with optional scale and bias."""
        hp = self.hp
        prefix = f"blk.{il}."
        n_q = hp.head_dim * hp.n_head
        n_k = hp.head_dim * hp.n_head_kv
        if self.has(prefix + "attn_qkv.weight"):
            fused = self.lora_mm(x, prefix + "attn_qkv", scale=True)
            self.rec("wqkv", il, fused)
            bias = self.opt(prefix + "attn_qkv.bias")
            if bias is None and all(self.has(prefix + f"attn_{p}.bias") for p in "qkv"):
                bias = np.concatenate([self.w(prefix + f"attn_{p}.bias") for p in "qkv"])
            if bias is not None:
                fused = np.add(fused, bias, dtype=np.float32)
                self.rec("wqkv_b", il, fused)
            q2, k2, v2 = fused[:, :n_q], fused[:, n_q : n_q + n_k], fused[:, n_q + n_k :]
        else:
            q2 = self._proj_bias(x, prefix + "attn_q")
            k2 = self._proj_bias(x, prefix + "attn_k")
            v2 = self._proj_bias(x, prefix + "attn_v")
        n = self.n_tokens
        return Qkv(
            q=np.ascontiguousarray(q2).reshape(n, hp.n_head, hp.head_dim),
            k=np.ascontiguousarray(k2).reshape(n, hp.n_head_kv, hp.head_dim),
            v=np.ascontiguousarray(v2).reshape(n, hp.n_head_kv, hp.head_dim_v),
        )

    def _proj_bias(self, x: F32Array, base: str) -> F32Array:
        out = self.lora_mm(x, base, scale=True)
        bias = self.opt(base + ".bias")
        if bias is not None:
            out = np.add(out, bias, dtype=np.float32)
        return out

    def rope(self, x: F32Array, il: int, *, freq_factors: F32Array | None = None) -> F32Array:
        """ggml_rope_ext with the layer's base and scale (mode from the architecture)."""
        hp = self.hp
        base, freq_scale = hp.layer_rope(il)
        if self.faulty(ROPE_BASE_FAULT.name):
            assert self.fault is not None and self.fault.magnitude is not None
            base *= self.fault.magnitude
        key = (base, freq_scale)
        tables = self._rope_cache.get(key) if freq_factors is None else None
        if tables is None:
            tables = ops.rope_cos_sin(
                self.positions,
                n_dims=hp.n_rot,
                base=base,
                freq_scale=freq_scale,
                freq_factors=freq_factors,
                attn_factor=hp.rope_attn_factor,
            )
            if freq_factors is None:
                self._rope_cache[key] = tables
        rope_type = hp.rope_type
        if self.faulty(ROPE_TYPE_FAULT.name):
            rope_type = "neox" if rope_type == "norm" else "norm"
        return ops.apply_rope(x, tables[0], tables[1], rope_type=rope_type, n_dims=hp.n_rot)

    def attend(self, qkv: Qkv, il: int, *, kq_scale: float) -> F32Array:
        """build_attn_mha without flash attention: causal (and sliding-window) softmax attention."""
        hp = self.hp
        window = 0
        if hp.is_swa(il):
            window = hp.n_swa
            if self.fault is not None and self.faulty(SLIDING_WINDOW_FAULT.name):
                window = fault_window(self.fault, hp)
        k, v, k_positions = qkv.k, qkv.v, self.positions
        if self.cache is not None:
            held = self.cache.extend(il, qkv.k, qkv.v, self.positions, window=window)
            k, v, k_positions = held.k, held.v, held.positions
        key = (window, int(k_positions[0]), int(k_positions.shape[0]))
        allowed = self._mask_cache.get(key)
        if allowed is None:
            allowed = ops.attention_mask(
                self.positions,
                k_positions,
                window=window,
                ahead=1 if self.faulty(MASK_AHEAD_FAULT.name) else 0,
                include_self=not self.faulty(MASK_NO_SELF_FAULT.name),
            )
            self._mask_cache[key] = allowed
        if self.fault is not None and self.faulty(ATTN_SCALE_FAULT.name):
            assert self.fault.magnitude is not None
            kq_scale = float(np.float32(kq_scale) * np.float32(self.fault.magnitude))
        heads = np.arange(hp.n_head, dtype=np.int64)
        kv_head = heads % hp.n_head_kv if self.faulty(GQA_MAPPING_FAULT.name) else heads // hp.n_group
        out = ops.attention(
            qkv.q,
            k,
            v,
            allowed=allowed,
            kq_scale=kq_scale,
            kv_head=kv_head,
            kv_f16=self.options.kv_cache == "f16",
        )
        return out

    # --- feed-forward ---

    def ffn(
        self,
        x: F32Array,
        il: int,
        *,
        activation: ops.Activation,
        scales: bool,
        biases: bool,
        down: bool,
        act_name: str | None = None,
    ) -> F32Array:
        """build_ffn with a parallel gate (LLM_FFN_PAR), names as llama.cpp gives them.

        ggml evaluates the gate branch before the up branch (the fused op takes the gate first),
        so the names are reported in that order. ``act_name`` renames the gated product (bitnet
        calls it ``ffn_sub_out``); without ``down`` the gated product is returned.
        """
        prefix = f"blk.{il}."
        gate_base, up_base = prefix + "ffn_gate", prefix + "ffn_up"
        if self.faulty(SWAPPED_GATE_UP_FAULT.name):
            gate_base, up_base = up_base, gate_base

        gate = self.matmul(x, gate_base + ".weight")
        self.rec("ffn_gate", il, gate)
        gate = self._ffn_extras(gate, gate_base, il, "ffn_gate", scales=scales, biases=biases)
        if activation == "relu2":
            relu = np.maximum(gate, np.float32(0.0))
            self.rec("ffn_relu", il, relu)
            self.rec("ffn_sqr(relu)", il, relu * relu)

        up = self.matmul(x, up_base + ".weight")
        self.rec("ffn_up", il, up)
        up = self._ffn_extras(up, up_base, il, "ffn_up", scales=scales, biases=biases)

        act = ops.gated(gate, up, activation, gelu_fp16_table=self.options.gelu_fp16_table)
        default_name = {"silu": "ffn_swiglu", "gelu": "ffn_geglu", "relu2": "ffn_gate_par"}[activation]
        self.rec(act_name or default_name, il, act)
        if not down:
            return act

        down_base = prefix + "ffn_down"
        out = self.matmul(act, down_base + ".weight")
        bias = self.opt(down_base + ".bias") if biases else None
        if bias is not None:
            self.rec("ffn_down", il, out)
            out = np.add(out, bias, dtype=np.float32)
        s = self.opt(down_base + ".scale") if scales else None
        if s is not None:
            out = np.multiply(out, s.reshape(-1)[0], dtype=np.float32)
            self.rec("ffn_down_s", il, out)
        return out

    def _ffn_extras(self, y: F32Array, base: str, il: int, name: str, *, scales: bool, biases: bool) -> F32Array:
        bias = self.opt(base + ".bias") if biases else None
        if bias is not None:
            y = np.add(y, bias, dtype=np.float32)
            self.rec(name + "_b", il, y)
        s = self.opt(base + ".scale") if scales else None
        if s is not None:
            y = np.multiply(y, s.reshape(-1)[0], dtype=np.float32)
            self.rec(name + "_s", il, y)
        return y
