"""Hyperparameters of a model, read from GGUF metadata the way llama.cpp reads them.

Defaults and derived values follow ``llama_model::load_hparams`` of the pinned llama.cpp
(src/llama-model.cpp): rope base 10000, rope scaling "linear" with factor 1, head count of K/V
defaulting to the head count, head size ``n_embd / n_head`` unless ``attention.key_length``
says otherwise. :class:`HParams` holds what every graph may use, as llama.cpp's
``llama_hparams`` does; an architecture's own keys (its ``load_arch_hparams``) are read by its
module under :mod:`.archs`, which fills the fields that concern it (sliding window, attention
scale, final softcap, ...) with the helpers below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.ops import RopeType
from bitnet_crossval.errors import BadInput

if TYPE_CHECKING:
    from bitnet_crossval.crossval.engine.archs.base import Architecture


@dataclass(frozen=True, kw_only=True)
class HParams:
    family: str  # the registered architecture that runs the model (archs.ALL_ARCHITECTURES)
    architecture: str  # as written in the file
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int  # attention.key_length
    head_dim_v: int  # attention.value_length
    n_ff: int
    n_rot: int
    rms_eps: float
    rope_type: RopeType
    rope_base: float
    rope_freq_scale: float
    rope_attn_factor: float
    # Set by the architectures that use them (neutral otherwise), as in llama_hparams.
    n_swa: int  # 0: no sliding window
    swa_layers: tuple[bool, ...]
    rope_base_swa: float
    rope_freq_scale_swa: float
    final_logit_softcap: float  # 0: none
    attention_scale: float  # 1/sqrt(head_dim) unless the architecture says otherwise

    @property
    def n_group(self) -> int:
        return self.n_head // self.n_head_kv

    def is_swa(self, layer: int) -> bool:
        return self.n_swa > 0 and self.swa_layers[layer]

    def layer_rope(self, layer: int) -> tuple[float, float]:
        """(base, freq_scale) of a layer: sliding-window layers may have their own."""
        if self.is_swa(layer):
            return self.rope_base_swa, self.rope_freq_scale_swa
        return self.rope_base, self.rope_freq_scale


def read_hparams(model: GGUFModelFile, architecture: Architecture | None = None) -> HParams:
    """The model's hyperparameters; ``architecture`` defaults to the registered one that runs it."""
    if architecture is None:
        # The architecture modules build on this one, so the registry is imported when needed.
        from bitnet_crossval.crossval.engine.archs import architecture_of

        architecture = architecture_of(model.architecture)
    arch = model.architecture
    check_hyperparameters(model)

    def key(name: str) -> str:
        return f"{arch}.{name}"

    n_embd = model.get_int(key("embedding_length"))
    n_layer = model.get_int(key("block_count"))
    n_head = _uniform_int(model, key("attention.head_count"), n_layer, default=None)
    n_head_kv = _uniform_int(model, key("attention.head_count_kv"), n_layer, default=n_head)
    n_ff = _uniform_int(model, key("feed_forward_length"), n_layer, default=None)
    rms_eps = model.get_float(key("attention.layer_norm_rms_epsilon"))
    if n_embd <= 0 or n_layer <= 0 or n_head <= 0 or n_head_kv <= 0 or n_ff <= 0:
        raise BadInput(
            f"the model {model.path} declares a zero size (embedding {n_embd}, layers {n_layer}, heads {n_head}, "
            f"K/V heads {n_head_kv}, feed-forward {n_ff})",
            next_step="check that the file is a complete model (re-convert it)",
        )
    if n_head % n_head_kv != 0:
        raise BadInput(
            f"the model {model.path} has {n_head} attention heads, not a multiple of its {n_head_kv} K/V heads",
            next_step="check that the file is a complete model (re-convert it)",
        )
    head_dim = model.get_int(key("attention.key_length"), default=n_embd // n_head)
    head_dim_v = model.get_int(key("attention.value_length"), default=n_embd // n_head)
    n_rot = model.get_int(key("rope.dimension_count"), default=head_dim)
    if n_rot > head_dim or n_rot % 2 != 0:
        raise BadInput(
            f"the model {model.path} declares rope.dimension_count {n_rot} for heads of {head_dim}",
            next_step="check that the file is a complete model (re-convert it)",
        )
    if head_dim != head_dim_v:
        raise BadInput(
            f"the model {model.path} has K heads of {head_dim} and V heads of {head_dim_v}; "
            f"the {architecture.NAME} graph needs them equal",
            next_step="check that the file is a complete model (re-convert it)",
        )

    rope_base = model.get_float(key("rope.freq_base"), default=10000.0)
    scaling = model.get_str(key("rope.scaling.type"), default="linear")
    if scaling not in {"none", "linear"}:
        raise BadInput(
            f"the model {model.path} uses rope scaling {scaling!r}, "
            "which the NumPy reference engine does not implement",
            next_step="use a model without YaRN/LongRoPE scaling, or an external candidate",
        )
    factor = model.get_float(key("rope.scaling.factor"), default=0.0)
    if factor == 0.0:
        factor = model.get_float(key("rope.scale_linear"), default=0.0)
    rope_freq_scale = 1.0 if factor == 0.0 else 1.0 / factor
    rope_attn_factor = model.get_float(key("rope.scaling.attn_factor"), default=1.0)

    n_vocab = model.info("token_embd.weight").ne[1] if len(model.info("token_embd.weight").ne) == 2 else 0
    if n_vocab <= 0 or model.info("token_embd.weight").ne[0] != n_embd:
        raise BadInput(
            f"the token embedding of {model.path} has shape {model.info('token_embd.weight').ne}, "
            f"expected ({n_embd}, n_vocab)",
            next_step="check that the file is a complete model (re-convert it)",
        )

    shared = HParams(
        family=architecture.NAME,
        architecture=arch,
        n_vocab=n_vocab,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        head_dim_v=head_dim_v,
        n_ff=n_ff,
        n_rot=n_rot,
        rms_eps=rms_eps,
        rope_type=architecture.ROPE_TYPE,
        rope_base=rope_base,
        rope_freq_scale=rope_freq_scale,
        rope_attn_factor=rope_attn_factor,
        n_swa=0,
        swa_layers=tuple(False for _ in range(n_layer)),
        rope_base_swa=10000.0,
        rope_freq_scale_swa=1.0,
        final_logit_softcap=0.0,
        attention_scale=f32_inv_sqrt(head_dim),
    )
    return architecture.read_hparams(model, shared)


# Keys (after "<architecture>.") whose values llama.cpp uses in a way that aborts or computes
# garbage outside a range: ggml asserts eps >= 0 in every norm (an abort, SIGABRT), an epsilon of
# 0 divides by zero on a zero row, a RoPE base at or below 0 makes the rotation angles NaN, a
# negative scale factor or softcap turns the rotation or the logits around.
_RANGES: tuple[tuple[Callable[[str], bool], Callable[[float], bool], str], ...] = (
    (lambda k: k.endswith("_epsilon"), lambda v: v > 0.0, "a norm epsilon must be greater than 0"),
    (lambda k: "freq_base" in k, lambda v: v > 0.0, "a RoPE base must be greater than 0"),
    (
        lambda k: k in {"rope.scaling.factor", "rope.scale_linear"},
        lambda v: v >= 0.0,
        "a RoPE scale factor must be 0 (none) or more",
    ),
    (lambda k: k == "rope.scaling.attn_factor", lambda v: v > 0.0, "a RoPE attention factor must be greater than 0"),
    (lambda k: k.endswith("logit_softcapping"), lambda v: v >= 0.0, "a logit softcap must be 0 (none) or more"),
)


def check_hyperparameters(model: GGUFModelFile) -> None:
    """Refuse hyperparameters that make llama.cpp abort or compute NaN, for a model of any
    architecture (registered or not): every floating-point value under ``<architecture>.`` must
    be finite, and the ones in :data:`_RANGES` within their range. Cheap: metadata only."""
    prefix = f"{model.architecture}."
    for key in model.metadata_keys():
        if not key.startswith(prefix):
            continue
        values = _float_values(model, key)
        if not values:
            continue
        for value in values:
            if not math.isfinite(value):
                raise _bad_hyperparameter(model, key, values, "it must be a finite number")
        own = key[len(prefix) :]
        for applies, within, why in _RANGES:
            if applies(own) and not all(within(v) for v in values):
                raise _bad_hyperparameter(model, key, values, why)


def _float_values(model: GGUFModelFile, key: str) -> list[float]:
    """The floating-point values of a metadata key (one, or an array's), none for other types."""
    field = model.raw_field(key)
    if field is None or not field.types:
        return []
    from gguf import GGUFValueType

    if field.types[-1] not in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return []
    value = model.get(key)
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def _bad_hyperparameter(model: GGUFModelFile, key: str, values: list[float], why: str) -> BadInput:
    shown = f"{values[0]:g}" if len(values) == 1 else "[" + ", ".join(f"{v:g}" for v in values[:8]) + ", ...]"
    return BadInput(
        f"the model {model.path} declares {key} = {shown}: {why} (llama.cpp would abort or compute NaN)",
        next_step="the model's hyperparameters are damaged: re-convert or re-download it",
    )


# --- helpers for the architectures' own keys ---


def require_full_rotation(model: GGUFModelFile, hp: HParams) -> None:
    """For graphs where llama.cpp asserts that RoPE rotates whole heads (n_rot == head size)."""
    if hp.n_rot != hp.head_dim:
        raise BadInput(
            f"the {hp.family} model {model.path} rotates {hp.n_rot} dimensions per head, "
            f"llama.cpp requires {hp.head_dim}",
            next_step="check that the file is a complete model (re-convert it)",
        )


def f32_inv_sqrt(n: int) -> float:
    """1/sqrt(n) computed in float32, as llama.cpp computes attention scales."""
    return float(np.float32(1.0) / np.sqrt(np.float32(n)))


def _uniform_int(model: GGUFModelFile, key: str, n_layer: int, *, default: int | None) -> int:
    """A per-model integer that llama.cpp also accepts as a per-layer array (get_key_or_arr)."""
    value = model.get(key)
    if value is None:
        if default is None:
            return model.get_int(key)  # raises the "lacks the metadata key" error
        return default
    if isinstance(value, list):
        values = {int(v) for v in value}
        if len(value) != n_layer or len(values) != 1:
            raise BadInput(
                f"the model {model.path} gives {key} per layer with different values; "
                "the NumPy reference engine supports one value for all layers",
                next_step="use a model with uniform layers, or an external candidate",
            )
        return values.pop()
    return model.get_int(key)


def swa_pattern(model: GGUFModelFile, key: str, n_layer: int, *, default: int) -> tuple[bool, ...]:
    """llama_model_base::load_swa_pattern (dense_first false): which layers use the sliding window.

    ``key`` holds either one bool per layer or a period n (every n-th layer is global, the others
    slide); ``default`` is the architecture's period when the key is absent.
    """
    value = model.get(key)
    if isinstance(value, list):
        if len(value) < n_layer:
            raise BadInput(
                f"the model {model.path} gives {key} for {len(value)} layers, it has {n_layer}",
                next_step="check that the file is a complete model (re-convert it)",
            )
        return tuple(bool(v) for v in value[:n_layer])
    n_pattern = default if value is None else model.get_int(key)
    return tuple(n_pattern == 0 or (il % n_pattern) < (n_pattern - 1) for il in range(n_layer))


def describe(hp: HParams) -> dict[str, object]:
    """Provenance facts for a report."""
    return {
        "architecture": hp.architecture,
        "family": hp.family,
        "n_vocab": hp.n_vocab,
        "n_embd": hp.n_embd,
        "n_layer": hp.n_layer,
        "n_head": hp.n_head,
        "n_head_kv": hp.n_head_kv,
        "head_dim": hp.head_dim,
        "n_ff": hp.n_ff,
        "rope_type": hp.rope_type,
        "rope_base": hp.rope_base,
        "rope_freq_scale": hp.rope_freq_scale,
        "n_swa": hp.n_swa,
        "swa_layers": [il for il in range(hp.n_layer) if hp.is_swa(il)],
        "rope_base_swa": hp.rope_base_swa if hp.n_swa > 0 else None,
        "final_logit_softcap": hp.final_logit_softcap or None,
        "rms_eps": hp.rms_eps,
        "attention_scale": hp.attention_scale,
    }
