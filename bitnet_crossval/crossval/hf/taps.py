"""Where llama.cpp's named intermediates are in a transformers model, and the hooks that record them.

Each :class:`Tap` names one module of a decoder layer (or of the model) and whether its input or
its output is the tensor llama.cpp calls ``name-<layer>``. Hooks see every tensor as transformers
computes it; only the layout changes on the way out: the batch axis is dropped (one sequence),
Q/K/V get llama.cpp's ``[n_tokens, n_head, head_dim]`` (transformers keeps ``[n_head, n_tokens,
head_dim]`` after its transpose, and V as ``[n_tokens, n_head_kv * head_dim]`` before it).

Q and K after RoPE are no module's output: transformers applies RoPE with a module-level
function, ``apply_rotary_pos_emb`` of the model's modeling module. While a trace is attached,
that function is wrapped so its two results are recorded for the layer whose attention is
running (a pre-hook on each attention module says which). For ``llama`` those rows keep
transformers' order, each head's rotary pairs as halves ``(i, i + d/2)``; llama's GGUF stores
them adjacent ``(2i, 2i + 1)`` (its converter permutes the Q/K rows, and transformers' GGUF
reader permutes them back), and the suite's trace comparison maps that order for ``llama``
explicitly. Gemma's RoPE rotates halves on both sides.

A tensor of llama.cpp's graph that transformers never materialises is not recorded, and the
comparison reports it as missing: the bare RMS normalisation ``norm-N`` (transformers multiplies
by the weight in the same expression), gemma3's unscaled ``embd`` (its embedding module returns
the scaled rows, ``inp_scaled``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.trace import TraceRecorder

Point = Literal["input", "output"]
Layout = Literal["tokens", "heads_first", "kv_heads"]

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Tap:
    """llama.cpp's ``name`` is the ``point`` (input or output) of the module at ``path``."""

    name: str
    path: str
    """Dotted attribute path below a decoder layer (layer taps) or below the causal LM (model taps);
    empty for the decoder layer itself."""
    point: Point = "output"
    layout: Layout = "tokens"


@dataclass(frozen=True)
class TapTable:
    """Every tap of one transformers architecture."""

    model_type: str
    layers: str
    """Path of the decoder layers (a ModuleList) below the causal LM."""
    model_taps_before: tuple[Tap, ...]
    layer_taps: tuple[Tap, ...]
    model_taps_after: tuple[Tap, ...]
    attention: str = "self_attn"
    rotary: tuple[str, str] = ("Qcur", "Kcur")


LLAMA = TapTable(
    model_type="llama",
    layers="model.layers",
    model_taps_before=(Tap("embd", "model.embed_tokens"),),
    layer_taps=(
        Tap("attn_norm", "input_layernorm"),
        Tap("Vcur", "self_attn.v_proj", layout="kv_heads"),
        Tap("kqv_out", "self_attn.o_proj", point="input"),
        Tap("attn_out", "self_attn.o_proj"),
        Tap("ffn_inp", "post_attention_layernorm", point="input"),
        Tap("ffn_norm", "post_attention_layernorm"),
        Tap("ffn_gate", "mlp.gate_proj"),
        Tap("ffn_up", "mlp.up_proj"),
        Tap("ffn_swiglu", "mlp.down_proj", point="input"),
        Tap("ffn_out", "mlp"),
        Tap("l_out", ""),
    ),
    model_taps_after=(Tap("result_norm", "model.norm"),),
)

GEMMA3 = TapTable(
    model_type="gemma3_text",
    layers="model.layers",
    # Gemma3TextScaledWordEmbedding returns the rows times sqrt(n_embd): llama.cpp's inp_scaled.
    model_taps_before=(Tap("inp_scaled", "model.embed_tokens"),),
    layer_taps=(
        Tap("attn_norm", "input_layernorm"),
        Tap("Qcur_normed", "self_attn.q_norm", layout="heads_first"),
        Tap("Kcur_normed", "self_attn.k_norm", layout="heads_first"),
        Tap("Vcur", "self_attn.v_proj", layout="kv_heads"),
        Tap("kqv_out", "self_attn.o_proj", point="input"),
        Tap("attn_post_norm", "post_attention_layernorm"),
        Tap("sa_out", "pre_feedforward_layernorm", point="input"),
        Tap("ffn_norm", "pre_feedforward_layernorm"),
        Tap("ffn_gate", "mlp.gate_proj"),
        Tap("ffn_up", "mlp.up_proj"),
        Tap("ffn_geglu", "mlp.down_proj", point="input"),
        Tap("ffn_out", "mlp"),
        Tap("ffn_post_norm", "post_feedforward_layernorm"),
        Tap("l_out", ""),
    ),
    model_taps_after=(Tap("result_norm", "model.norm"),),
)

TABLES: dict[str, TapTable] = {t.model_type: t for t in (LLAMA, GEMMA3)}

RESULT_OUTPUT = "result_output"
"""The logits, recorded from the model's output (after any final softcap), as llama.cpp names them."""


def table_for(model_type: str) -> TapTable | None:
    return TABLES.get(model_type)


class TraceSession:
    """What one attached trace recorded, and what it could not find in the model."""

    def __init__(self, recorder: TraceRecorder, table: TapTable, *, n_head: int, n_head_kv: int, head_dim: int) -> None:
        self.recorder = recorder
        self.table = table
        self.n_head = n_head
        self.n_head_kv = n_head_kv
        self.head_dim = head_dim
        self.unmapped: list[str] = []
        """Taps whose module this model does not have (a transformers version that renamed it)."""
        self.current_layer: int | None = None

    def record(self, name: str, layer: int, value: Any, layout: Layout) -> None:
        if not self.recorder.wants(name, layer):
            return
        self.recorder.record(name, layer, self.to_numpy(value, layout))

    def to_numpy(self, value: Any, layout: Layout) -> F32Array:
        """A tensor of one sequence in llama.cpp's layout (token axis first)."""
        array: F32Array = value.detach().float().cpu().numpy()[0]  # drop the batch axis
        if layout == "heads_first":  # [n_head, n_tokens, head_dim]
            return np.ascontiguousarray(array.transpose(1, 0, 2))
        if layout == "kv_heads":  # [n_tokens, n_head_kv * head_dim]
            return np.ascontiguousarray(array.reshape(array.shape[0], self.n_head_kv, self.head_dim))
        return np.ascontiguousarray(array)


@contextmanager
def attached(model: Any, recorder: TraceRecorder) -> Iterator[TraceSession | None]:
    """Record llama.cpp's intermediates into ``recorder`` while the block runs.

    Yields None (and records nothing) for an architecture without a tap table. The hooks and
    the RoPE wrapper are removed on exit, also after an exception.
    """
    config = model.config
    table = table_for(str(getattr(config, "model_type", "")))
    if table is None:
        yield None
        return
    n_head = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // n_head)
    session = TraceSession(recorder, table, n_head=n_head, n_head_kv=int(config.num_key_value_heads), head_dim=head_dim)
    handles: list[Any] = []
    restore: Callable[[], None] | None = None
    try:
        for tap in table.model_taps_before + table.model_taps_after:
            _hook(model, tap, layer=-1, session=session, handles=handles)
        layers = _module(model, table.layers)
        for il, layer in enumerate(layers or ()):
            for tap in table.layer_taps:
                _hook(layer, tap, layer=il, session=session, handles=handles)
            attention = _module(layer, table.attention)
            if attention is not None:
                handles.append(attention.register_forward_pre_hook(_enter_layer(session, il)))
                handles.append(attention.register_forward_hook(_leave_layer(session)))
        restore = _wrap_rotary(model, table, session)
        yield session
    finally:
        if restore is not None:
            restore()
        for handle in handles:
            handle.remove()


def record_logits(session: TraceSession | None, recorder: TraceRecorder, logits: F32Array) -> None:
    """``result_output``: the logits the model returned, the last tensor of llama.cpp's graph."""
    if session is not None and recorder.wants(RESULT_OUTPUT, -1):
        recorder.record(RESULT_OUTPUT, -1, logits)


def _hook(root: Any, tap: Tap, *, layer: int, session: TraceSession, handles: list[Any]) -> None:
    module = _module(root, tap.path)
    if module is None:
        session.unmapped.append(tap.name if layer < 0 else f"{tap.name}-{layer}")
        return
    if tap.point == "input":

        def before(_module: Any, args: tuple[Any, ...], tap: Tap = tap) -> None:
            if args:
                session.record(tap.name, layer, args[0], tap.layout)

        handles.append(module.register_forward_pre_hook(before))
        return

    def after(_module: Any, _args: tuple[Any, ...], output: Any, tap: Tap = tap) -> None:
        # A decoder layer of older transformers returns a tuple whose first item is the hidden state.
        value = output[0] if isinstance(output, tuple) else output
        session.record(tap.name, layer, value, tap.layout)

    handles.append(module.register_forward_hook(after))


def _enter_layer(session: TraceSession, il: int) -> Callable[..., None]:
    def enter(_module: Any, _args: tuple[Any, ...]) -> None:
        session.current_layer = il

    return enter


def _leave_layer(session: TraceSession) -> Callable[..., None]:
    def leave(_module: Any, _args: tuple[Any, ...], _output: Any) -> None:
        session.current_layer = None

    return leave


def _wrap_rotary(model: Any, table: TapTable, session: TraceSession) -> Callable[[], None] | None:
    """Record the results of the modeling module's ``apply_rotary_pos_emb`` as Qcur/Kcur."""
    layers = _module(model, table.layers)
    attention = _module(layers[0], table.attention) if layers is not None and len(layers) else None
    modeling = sys.modules.get(type(attention).__module__) if attention is not None else None
    original = getattr(modeling, "apply_rotary_pos_emb", None)
    if modeling is None or original is None:
        session.unmapped += list(table.rotary)
        return None
    q_name, k_name = table.rotary

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        layer = session.current_layer
        if layer is not None and isinstance(result, tuple) and len(result) == 2:
            session.record(q_name, layer, result[0], "heads_first")
            session.record(k_name, layer, result[1], "heads_first")
        return result

    setattr(modeling, "apply_rotary_pos_emb", recording)  # noqa: B010 (a module global, looked up per call)

    def restore() -> None:
        setattr(modeling, "apply_rotary_pos_emb", original)  # noqa: B010

    return restore


def _module(root: Any, path: str) -> Any:
    module = root
    for part in path.split(".") if path else ():
        module = getattr(module, part, None)
        if module is None:
            return None
    return module
