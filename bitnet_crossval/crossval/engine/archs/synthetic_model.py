"""What an architecture declares about its synthetic model, and the parts most layers share.

:mod:`bitnet_crossval.crossval.synthetic` owns the shared machinery (the random stream, the
vocabulary copy, the keys every model has, the tensor writing); an architecture's module says
what is its own: a default :class:`SyntheticSpec` (a subclass of it for options of its own),
the weights of one layer, what follows the final norm, its own metadata keys, and the scales
that make its activations look trained.

Every number is drawn from one random stream in the order the weights are listed, so changing
the order or the count of draws changes every model written after that point (and so the
models' cache keys: see ``models.SYNTHETIC_VERSION``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BadInput

F32Array = npt.NDArray[np.float32]
Weight = tuple[str, F32Array, float | None]
"""name, float32 values [out, in] (numpy order), and the per-tensor scale of a ternary matrix."""


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """Shape of a synthetic model, and how its ternary projections are stored.

    Dimensions are multiples of 256 so every tensor type (the 256-value blocks of TQ1_0/TQ2_0
    included) can store every matrix. An architecture with options of its own subclasses it.
    """

    n_layer: int
    n_embd: int = 256
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    n_ff: int = 512
    context_length: int = 512
    rms_eps: float = 1e-5
    rope_base: float = 10000.0
    # Ternary projections as pure ternary weights plus ``<name>.scale`` tensors instead of ternary*scale.
    scale_tensors: bool = False


SpecT = TypeVar("SpecT", bound=SyntheticSpec)


def spec_as(cls: type[SpecT], spec: SyntheticSpec) -> SpecT:
    """``spec`` as an architecture's own spec class; a plain :class:`SyntheticSpec` takes its defaults."""
    if isinstance(spec, cls):
        return spec
    if type(spec) is SyntheticSpec:
        return cls(**{f.name: getattr(spec, f.name) for f in fields(SyntheticSpec)})
    raise BadInput(
        f"a {type(spec).__name__} does not describe a model of this architecture (it takes a {cls.__name__})",
        next_step="start from synthetic.default_spec(ARCH) of the architecture you write",
    )


class Draw(Protocol):
    """The random stream of one model (``synthetic._Draw``)."""

    def gaussian(self, rows: int, cols: int, std: float) -> F32Array: ...

    def matrix(self, rows: int, cols: int, std: float) -> tuple[F32Array, float | None]: ...

    def norm(self, n: int, *, centre: float = 1.0, spread: float = 0.1) -> F32Array: ...


class MetadataWriter(Protocol):
    """The part of gguf-py's ``GGUFWriter`` an architecture uses for its own keys."""

    def add_uint32(self, key: str, val: int) -> None: ...

    def add_float32(self, key: str, val: float) -> None: ...

    def add_array(self, key: str, val: Sequence[Any]) -> None: ...


LayerRule = Callable[[Draw, SyntheticSpec, int], list[Weight]]
OutputRule = Callable[[Draw, SyntheticSpec, int], list[Weight]]
MetadataRule = Callable[[MetadataWriter, SyntheticSpec, str], None]
SpecCheck = Callable[[SyntheticSpec], list[str]]


def no_weights(draw: Draw, spec: SyntheticSpec, n_vocab: int) -> list[Weight]:
    return []


def no_keys(writer: MetadataWriter, spec: SyntheticSpec, prefix: str) -> None:
    return None


def no_problems(spec: SyntheticSpec) -> list[str]:
    return []


@dataclass(frozen=True, kw_only=True)
class SyntheticModel:
    """An architecture's synthetic model.

    ``layer(draw, spec, il)``: the weights of layer ``il``. ``output(draw, spec, n_vocab)``: the
    tensors after the final norm (a separate output matrix, ``rope_freqs``, ...).
    ``metadata(writer, spec, prefix)``: keys of its own (``prefix`` is ``"<architecture>."``),
    written after the keys every model has. ``check(spec)``: problems of a spec, one phrase
    each. ``embedding_std`` and ``output_norm`` (the centre of the final norm's weights) set the
    spread of the logits; ``ternary``: projections are ternary whatever the tensor type.
    ``file_architectures``: tensor types stored under another ``general.architecture`` (a type
    upstream llama.cpp cannot load is written only for architectures that list it here).
    """

    spec: SyntheticSpec
    layer: LayerRule
    embedding_std: float
    output_norm: float
    output: OutputRule = no_weights
    metadata: MetadataRule = no_keys
    check: SpecCheck = no_problems
    ternary: bool = False
    file_architectures: Mapping[str, str] = field(default_factory=dict)


class LayerWeights:
    """The weights of one layer, drawn in the order they are added.

    The helpers hold the scales shared by every architecture here: Q/K entries spread about
    1.1 per unit input (scaled dot products of order one: softmax neither flat nor one-hot),
    outputs of the attention and FFN halved (the residual stream neither explodes nor vanishes).
    """

    def __init__(self, draw: Draw, spec: SyntheticSpec, il: int) -> None:
        self.draw = draw
        self.spec = spec
        self.prefix = f"blk.{il}."
        self.weights: list[Weight] = []

    @property
    def q_dim(self) -> int:
        return self.spec.n_head * self.spec.head_dim

    @property
    def kv_dim(self) -> int:
        return self.spec.n_head_kv * self.spec.head_dim

    def norm(self, name: str, n: int, *, centre: float = 1.0, spread: float = 0.1) -> None:
        self.weights.append((f"{self.prefix}{name}.weight", self.draw.norm(n, centre=centre, spread=spread), None))

    def proj(self, name: str, rows: int, cols: int, std: float) -> None:
        values, scale = self.draw.matrix(rows, cols, std)
        self.weights.append((f"{self.prefix}{name}.weight", values, scale))

    def bias(self, name: str, n: int, std: float) -> None:
        self.weights.append((f"{self.prefix}{name}.bias", self.draw.gaussian(1, n, std)[0], None))

    def qkv(self) -> None:
        d = self.spec.n_embd
        self.proj("attn_q", self.q_dim, d, 1.1 / math.sqrt(d))
        self.proj("attn_k", self.kv_dim, d, 1.1 / math.sqrt(d))
        self.proj("attn_v", self.kv_dim, d, 1.0 / math.sqrt(d))

    def attn_output(self) -> None:
        self.proj("attn_output", self.spec.n_embd, self.q_dim, 0.5 / math.sqrt(self.q_dim))

    def ffn_gate_up(self) -> None:
        d, ff = self.spec.n_embd, self.spec.n_ff
        self.proj("ffn_gate", ff, d, 1.0 / math.sqrt(d))
        self.proj("ffn_up", ff, d, 1.0 / math.sqrt(d))

    def ffn_down(self) -> None:
        d, ff = self.spec.n_embd, self.spec.n_ff
        self.proj("ffn_down", d, ff, 0.5 / math.sqrt(ff))
