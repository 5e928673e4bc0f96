"""What transformers took from a GGUF and what from its own defaults, checked against the file.

transformers builds a model's configuration from a GGUF with a fixed table of metadata keys
(``transformers.integrations.ggml``); every other setting keeps the default of the
architecture's configuration class. Where llama.cpp reads a setting from the file (or from its
own default when the key is absent), the two readings can differ: for Gemma 3, transformers
never reads ``attention.sliding_window_pattern`` nor ``rope.freq_base_swa``, and scales Q by
``query_pre_attn_scalar`` (default 256) where llama.cpp uses the file's ``attention.key_length``.

:func:`expectations` lists, per architecture, each setting the file determines, with the value
llama.cpp's reading gives (:func:`~bitnet_crossval.crossval.engine.hparams.read_hparams`, the
NumPy engine's copy of ``llama_model::load_hparams``) and where it comes from. :func:`check`
compares them with a transformers configuration:

- loading the GGUF itself, a setting that differs is set to the file's value (``corrected``),
  so the comparison measures the computation and not a default; a setting transformers cannot
  express (``refused``) makes the model unusable for the comparison;
- loading a Hugging Face checkpoint (``hf:PATH``), its configuration is the truth under test and
  is never changed: a difference is reported (``differs``), because it is a finding about the
  conversion.

Configurations are handled duck-typed (``getattr``/``setattr``), so this module imports
neither torch nor transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.hparams import HParams

Action = Literal["corrected", "refused", "differs"]

# transformers' model_type for each llama.cpp architecture this module knows.
MODEL_TYPES = {"llama": "llama", "gemma3": "gemma3_text"}


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """One setting of a transformers configuration that the model file determines."""

    setting: str
    value: Any
    source: str
    """Where the file's value comes from: a metadata key, a tensor, or llama.cpp's default."""
    read: Callable[[Any], Any]
    write: Callable[[Any, Any], None] | None = None
    """How to set it; None when transformers cannot express the file's value."""
    same: Callable[[Any, Any], bool] = lambda a, b: bool(a == b)


@dataclass(frozen=True, kw_only=True)
class ConfigFinding:
    setting: str
    transformers: Any
    model_file: Any
    source: str
    action: Action

    def sentence(self) -> str:
        have = f"{self.setting} {_show(self.transformers)}"
        want = f"{_show(self.model_file)} from {self.source}"
        if self.action == "corrected":
            return f"transformers' config had {have}; set to {want}"
        if self.action == "refused":
            return f"transformers' config has {have} and cannot take {want}"
        return f"the checkpoint's config has {have}; the model file says {want}"

    def to_json(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "transformers": _jsonable(self.transformers),
            "model_file": _jsonable(self.model_file),
            "source": self.source,
            "action": self.action,
        }


def check(config: Any, expected: list[Expectation], *, correct: bool) -> list[ConfigFinding]:
    """Compare ``config`` with what the file says; with ``correct``, set what can be set."""
    findings: list[ConfigFinding] = []
    for item in expected:
        have = item.read(config)
        if item.same(have, item.value):
            continue
        if not correct:
            action: Action = "differs"
        elif item.write is None:
            action = "refused"
        else:
            item.write(config, item.value)
            action = "corrected"
        findings.append(
            ConfigFinding(
                setting=item.setting, transformers=have, model_file=item.value, source=item.source, action=action
            )
        )
    return findings


def expectations(hp: HParams, model: GGUFModelFile) -> list[Expectation]:
    """Every setting the file determines for ``hp.family`` (empty for an architecture not listed in
    :data:`MODEL_TYPES`)."""
    if hp.architecture not in MODEL_TYPES:
        return []
    arch = hp.architecture
    out = _shape(hp, arch)
    out.append(
        Expectation(
            setting="rms_norm_eps",
            value=hp.rms_eps,
            source=f"{arch}.attention.layer_norm_rms_epsilon",
            read=lambda c: getattr(c, "rms_norm_eps", None),
            write=lambda c, v: setattr(c, "rms_norm_eps", v),
            same=_close,
        )
    )
    out.append(
        Expectation(
            setting="tie_word_embeddings",
            value=not model.has_tensor("output.weight"),
            source="the absence of output.weight (llama.cpp then reads token_embd.weight)",
            read=lambda c: bool(getattr(c, "tie_word_embeddings", False)),
        )
    )
    if hp.family == "llama":
        out += _llama(hp, model, arch)
    elif hp.family == "gemma3":
        out += _gemma3(hp, model, arch)
    return out


# --- shapes: a difference here means another model, never a default ----------------------------


def _shape(hp: HParams, arch: str) -> list[Expectation]:
    def fixed(setting: str, value: int, key: str, read: Callable[[Any], Any] | None = None) -> Expectation:
        return Expectation(
            setting=setting, value=value, source=f"{arch}.{key}", read=read or (lambda c: getattr(c, setting, None))
        )

    return [
        fixed("hidden_size", hp.n_embd, "embedding_length"),
        fixed("num_hidden_layers", hp.n_layer, "block_count"),
        fixed("num_attention_heads", hp.n_head, "attention.head_count"),
        fixed("num_key_value_heads", hp.n_head_kv, "attention.head_count_kv"),
        fixed("intermediate_size", hp.n_ff, "feed_forward_length"),
        fixed("head_dim", hp.head_dim, "attention.key_length", read=_head_dim),
        fixed("vocab_size", hp.n_vocab, "vocab_size (the rows of token_embd.weight)"),
        # transformers' llama and gemma3 rotate every dimension of a head.
        fixed("rotary dimensions", hp.n_rot, "rope.dimension_count", read=_head_dim),
    ]


def _head_dim(config: Any) -> Any:
    value = getattr(config, "head_dim", None)
    if value:
        return value
    return config.hidden_size // config.num_attention_heads


# --- llama ------------------------------------------------------------------------------------------


def _llama(hp: HParams, model: GGUFModelFile, arch: str) -> list[Expectation]:
    out = [
        Expectation(
            setting="rope_parameters.rope_theta",
            value=hp.rope_base,
            source=_key_or_default(model, f"{arch}.rope.freq_base", "10000"),
            read=lambda c: _rope(c).get("rope_theta"),
            write=lambda c, v: _set_rope(c, None, rope_theta=v),
            same=_close,
        ),
        Expectation(
            setting="hidden_act",
            value="silu",
            source="llama.cpp's llama graph (SiLU-gated FFN)",
            read=lambda c: getattr(c, "hidden_act", None),
            write=lambda c, v: setattr(c, "hidden_act", v),
        ),
    ]
    # llama.cpp divides the rotation angles by rope_freqs.weight (Llama 3's long-context factors);
    # transformers' GGUF reader has no such tensor and no key for the factors' parameters.
    if not model.has_tensor("rope_freqs.weight"):
        out.append(
            Expectation(
                setting="rope_parameters.factor",
                value=_scaling(hp.rope_freq_scale),
                source=_key_or_default(model, f"{arch}.rope.scaling.factor", "no scaling"),
                read=lambda c: _rope_factor(_rope(c)),
                write=lambda c, v: _set_rope(c, None, **_linear(v)),
                same=_close,
            )
        )
    else:
        out.append(
            Expectation(
                setting="rope_parameters.rope_type",
                value="llama3",
                source="the tensor rope_freqs.weight",
                read=lambda c: _rope(c).get("rope_type"),
            )
        )
    out += _biases(
        model,
        setting="attention_bias",
        tensors=("attn_q", "attn_k", "attn_v", "attn_output"),
        n_layer=hp.n_layer,
    )
    out += _biases(model, setting="mlp_bias", tensors=("ffn_gate", "ffn_up", "ffn_down"), n_layer=hp.n_layer)
    scaled = sorted({name.split(".", 2)[-1] for name in model.tensors if name.endswith(".scale")})
    if scaled:
        out.append(
            Expectation(
                setting="per-tensor scales",
                value=scaled,
                source="the file's *.scale tensors (llama.cpp multiplies the matmul outputs by them)",
                read=lambda c: [],
            )
        )
    return out


def _biases(model: GGUFModelFile, *, setting: str, tensors: tuple[str, ...], n_layer: int) -> list[Expectation]:
    """transformers has one switch for all of a block's biases; llama.cpp reads each when present."""
    present = {t for t in tensors for il in range(n_layer) if model.has_tensor(f"blk.{il}.{t}.bias")}
    value: bool | list[str] = bool(present)
    if present and present != set(tensors):
        value = sorted(f"{t}.bias" for t in present)  # only some: no switch of transformers says that
    write = (lambda c, v: setattr(c, setting, v)) if isinstance(value, bool) else None
    return [
        Expectation(
            setting=setting,
            value=value,
            source=f"the presence of {', '.join(t + '.bias' for t in tensors)}",
            read=lambda c: bool(getattr(c, setting, False)),
            write=write,
        )
    ]


# --- gemma3 -----------------------------------------------------------------------------------------


def _gemma3(hp: HParams, model: GGUFModelFile, arch: str) -> list[Expectation]:
    n_swa = hp.n_swa
    layer_types = ["sliding_attention" if hp.is_swa(il) else "full_attention" for il in range(hp.n_layer)]
    pattern_key = f"{arch}.attention.sliding_window_pattern"
    if n_swa > 0:
        layer_source = _key_or_default(model, pattern_key, "llama.cpp's default 6: every sixth layer global")
    else:
        layer_source = f"the absence of {arch}.attention.sliding_window (llama.cpp: no sliding window)"
    scalar = hp.n_embd // hp.n_head if hp.n_layer == 62 else hp.head_dim
    out = [
        Expectation(
            setting="query_pre_attn_scalar",
            value=scalar,
            source=(
                f"{arch}.embedding_length / {arch}.attention.head_count (llama.cpp's rule for 62 layers)"
                if hp.n_layer == 62
                else f"{arch}.attention.key_length (llama.cpp scales Q by 1/sqrt(key_length))"
            ),
            read=lambda c: getattr(c, "query_pre_attn_scalar", None),
            write=lambda c, v: setattr(c, "query_pre_attn_scalar", v),
        ),
        Expectation(
            setting="layer_types",
            value=layer_types,
            source=layer_source,
            read=lambda c: list(getattr(c, "layer_types", None) or []),
            write=_set_layer_types,
        ),
        Expectation(
            setting="rope_parameters.full_attention.rope_theta",
            value=hp.rope_base,
            source=_key_or_default(model, f"{arch}.rope.freq_base", "10000"),
            read=lambda c: _rope(c, "full_attention").get("rope_theta"),
            write=lambda c, v: _set_rope(c, "full_attention", rope_theta=v),
            same=_close,
        ),
        Expectation(
            setting="rope_parameters.full_attention.factor",
            value=_scaling(hp.rope_freq_scale),
            source=_key_or_default(model, f"{arch}.rope.scaling.factor", "no scaling"),
            read=lambda c: _rope_factor(_rope(c, "full_attention")),
            write=lambda c, v: _set_rope(c, "full_attention", **_linear(v)),
            same=_close,
        ),
        Expectation(
            setting="final_logit_softcapping",
            value=hp.final_logit_softcap or None,
            source=_key_or_default(model, f"{arch}.final_logit_softcapping", "none"),
            read=lambda c: getattr(c, "final_logit_softcapping", None) or None,
            write=lambda c, v: setattr(c, "final_logit_softcapping", v),
            same=_close_or_none,
        ),
        Expectation(
            setting="attn_logit_softcapping",
            value=None,
            source="llama.cpp's gemma3 graph (no attention softcap)",
            read=lambda c: getattr(c, "attn_logit_softcapping", None) or None,
            write=lambda c, v: setattr(c, "attn_logit_softcapping", v),
            same=_close_or_none,
        ),
        Expectation(
            setting="hidden_activation",
            value="gelu_pytorch_tanh",
            source="llama.cpp's gemma3 graph (GELU, tanh approximation)",
            read=lambda c: getattr(c, "hidden_activation", None),
            write=lambda c, v: setattr(c, "hidden_activation", v),
        ),
        Expectation(
            setting="use_bidirectional_attention",
            value=False,
            source="llama.cpp's gemma3 graph (causal)",
            read=lambda c: bool(getattr(c, "use_bidirectional_attention", False)),
            write=lambda c, v: setattr(c, "use_bidirectional_attention", v),
        ),
    ]
    if n_swa > 0:
        out += [
            Expectation(
                setting="sliding_window",
                value=n_swa,
                source=f"{arch}.attention.sliding_window",
                read=lambda c: getattr(c, "sliding_window", None),
                write=lambda c, v: setattr(c, "sliding_window", v),
            ),
            Expectation(
                setting="rope_parameters.sliding_attention.rope_theta",
                value=hp.rope_base_swa,
                source=_key_or_default(model, f"{arch}.rope.freq_base_swa", "llama.cpp's default 10000"),
                read=lambda c: _rope(c, "sliding_attention").get("rope_theta"),
                write=lambda c, v: _set_rope(c, "sliding_attention", rope_theta=v),
                same=_close,
            ),
            Expectation(
                setting="rope_parameters.sliding_attention.factor",
                value=1.0,
                source="llama.cpp (sliding-window layers are never scaled)",
                read=lambda c: _rope_factor(_rope(c, "sliding_attention")),
                write=lambda c, v: _set_rope(c, "sliding_attention", **_linear(v)),
                same=_close,
            ),
        ]
    return out


def _set_layer_types(config: Any, value: Any) -> None:
    config.layer_types = list(value)
    # The rotary tables of transformers' gemma3 are built per layer type present in the config.
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        for layer_type in set(value):
            params.setdefault(layer_type, {"rope_type": "default", "rope_theta": 10000.0})


# --- rope parameters (transformers 5: ``rope_parameters``, per layer type for gemma3) ----------------


def _rope(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict):
        return {}
    if layer_type is not None:
        inner = params.get(layer_type)
        return inner if isinstance(inner, dict) else {}
    return params


def _set_rope(config: Any, layer_type: str | None, **values: Any) -> None:
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict):
        params = {}
        config.rope_parameters = params
    target = params if layer_type is None else params.setdefault(layer_type, {"rope_type": "default"})
    target.update(values)
    if target.get("rope_type") == "default":
        target.pop("factor", None)


def _rope_factor(params: dict[str, Any]) -> float | str:
    """The linear scaling factor (llama.cpp's 1 / freq_scale), or the name of a kind of scaling that
    llama.cpp's reading of these keys does not express (``"yarn"``, ...), which never compares equal."""
    rope_type = str(params.get("rope_type", "default"))
    if rope_type == "default":
        return 1.0
    factor = params.get("factor")
    if rope_type == "linear" and isinstance(factor, (int, float)):
        return float(factor)
    return rope_type


def _scaling(freq_scale: float) -> float:
    return 1.0 / freq_scale if freq_scale else 1.0


def _linear(factor: float) -> dict[str, Any]:
    return {"rope_type": "default"} if factor == 1.0 else {"rope_type": "linear", "factor": factor}


# --- helpers -----------------------------------------------------------------------------------------


def _key_or_default(model: GGUFModelFile, key: str, default: str) -> str:
    return key if model.get(key) is not None else f"{default} ({key} absent)"


def _close(a: Any, b: Any) -> bool:
    """Float settings: the file stores float32, a checkpoint's config the decimal it was given."""
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return bool(a == b)
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=0.0)


def _close_or_none(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return _close(a, b)


def _show(value: Any) -> str:
    if isinstance(value, list) and len(value) > 8 and all(isinstance(v, str) for v in value):
        return _layer_runs(value)
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _layer_runs(value: list[str]) -> str:
    """A long per-layer list, as the layers that differ from the most common entry."""
    common = max(set(value), key=value.count)
    others = [i for i, v in enumerate(value) if v != common]
    return f"[{common} except layers {others}]"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
