"""What every candidate kind shares: the parsed ``--candidate``, what a candidate is built from,
what it returns, and the check that its output is logits.

A candidate takes a GGUF model and a sequence of token ids and returns the logits of every
position, ``[n_tokens, n_vocab]``, from one causal evaluation; with a trace request it also
hands over its intermediates under llama.cpp's names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import CandidateFailed
from bitnet_crossval.util.npy_rows import rows_not_finite

if TYPE_CHECKING:
    from bitnet_crossval.reference.client import KvType, Shim

DEFAULT_CANDIDATE_TIMEOUT = 600.0

F32Array = npt.NDArray[np.float32]
Traced = Mapping[str, Callable[[], F32Array]]


@dataclass(frozen=True, kw_only=True)
class CandidateSpec:
    """A parsed ``--candidate`` value; each kind adds the fields it needs."""

    kind: str
    text: str

    @property
    def label(self) -> str:
        return self.text

    @property
    def can_trace(self) -> bool:
        """Whether the candidate may write a trace (some kinds know only once loaded)."""
        return True


@dataclass(frozen=True, kw_only=True)
class CandidateSetting:
    """What a candidate is built with: the model under test and how the run is configured."""

    model: Path
    n_vocab: int
    architecture: str
    env: Mapping[str, str]
    timeout: float = DEFAULT_CANDIDATE_TIMEOUT
    threads: int = 1
    kv_type: KvType = "auto"
    bitnet_activation: Literal["silu", "relu2"] | None = None
    shim_for: Callable[[str], Shim] | None = None
    """The shim of another backend, for a candidate that is one (``llama``, ``bitnet``)."""
    progress: Callable[[float], None] | None = None
    """Told how many positions a candidate that can say so has evaluated (the built-in engine)."""


@dataclass(frozen=True, kw_only=True)
class ReferenceFacts:
    """What the reference's run turned out to be, for a candidate that follows its arithmetic."""

    kv_type_v: str
    """The V cache type the backend accepted (the 2024 bitnet.cpp fork allows only f16)."""


@dataclass(frozen=True, kw_only=True)
class CandidateOutput:
    logits: F32Array
    """``[n_tokens, n_vocab]``: in memory, or a memory map of a file in the run's work directory."""
    seconds: float
    details: Mapping[str, Any] = field(default_factory=dict)
    trace_dir: Path | None = None
    """Where the candidate wrote its trace, when one was asked for and written."""


@dataclass(frozen=True, kw_only=True)
class TraceRequest:
    """What to trace: token positions, an inclusive layer range, a regular expression over names."""

    positions: list[int]
    layers: tuple[int, int] | None = None
    names: str | None = None


class Candidate(Protocol):
    label: str

    def follow(self, reference: ReferenceFacts) -> Candidate:
        """The candidate set up as the reference's run turned out (most kinds return themselves)."""
        ...

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        """Logits of every position of ``tokens``; a trace into ``trace_dir`` when given and supported."""
        ...

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        """The candidate's intermediates by llama.cpp name, or None when it cannot trace."""
        ...


class CandidateKind(Protocol):
    """One kind of ``--candidate``: it parses its own syntax and builds its candidates."""

    heads: tuple[str, ...]
    """The words before the first ``:`` that name this kind (``cmd`` for ``cmd:...``)."""
    syntax: str
    """How to write it, for help and error messages (``cmd:<command line>``)."""

    def parse(self, text: str) -> CandidateSpec:
        """``text`` (whose head is one of :attr:`heads`) as a spec; :class:`BadInput` when malformed."""
        ...

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate: ...


def check_logits(array: object, *, label: str, n_tokens: int, n_vocab: int) -> F32Array:
    """The candidate's output as float32 ``[n_tokens, n_vocab]`` with finite values, or a
    :class:`CandidateFailed` naming the candidate and what was expected."""
    expected = f"a float array of shape [n_tokens, n_vocab] = [{n_tokens}, {n_vocab}] with finite values"
    if not isinstance(array, np.ndarray):
        raise CandidateFailed(f"the candidate {label} returned {type(array).__name__}, expected {expected}")
    if array.dtype.kind != "f":
        raise CandidateFailed(f"the candidate {label} returned dtype {array.dtype}, expected {expected}")
    if array.shape != (n_tokens, n_vocab):
        shape = "[" + ", ".join(str(d) for d in array.shape) + "]"
        raise CandidateFailed(f"the candidate {label} returned shape {shape}, expected {expected}")
    logits = np.asarray(array, dtype=np.float32)  # a float32 memory map stays one
    bad_rows = rows_not_finite(logits)
    if bad_rows:
        raise CandidateFailed(
            f"the candidate {label} returned non-finite values (NaN or infinity) at position "
            f"{int(bad_rows[0])} and {len(bad_rows) - 1} more, expected {expected}"
        )
    return logits


def constant(value: F32Array) -> Callable[[], F32Array]:
    return lambda: value


def traced_from_dir(output: CandidateOutput) -> Traced:
    from bitnet_crossval.crossval.trace import read_trace_dir

    return read_trace_dir(output.trace_dir) if output.trace_dir is not None else {}
