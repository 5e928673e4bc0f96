"""What every candidate kind shares: the parsed ``--candidate``, what a candidate is built from,
what it returns, and the check that its output is logits.

A candidate takes a GGUF model and a sequence of token ids and returns the logits of every
position, ``[n_tokens, n_vocab]``, from one causal evaluation; with a trace request it also
hands over its intermediates under llama.cpp's names.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.defaults import (
    DEFAULT_CANDIDATE_TIMEOUT,
)
from bitnet_crossval.errors import CandidateFailed, CommandTimedOut, UnreadableArray
from bitnet_crossval.util.files import make_dir, os_error

if TYPE_CHECKING:
    from bitnet_crossval.reference.client import KvType, Shim


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

    def run(self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace: bool) -> CandidateOutput:
        """Logits of every position of ``tokens``; with ``trace``, the candidate also writes its
        intermediates when it can (:attr:`CandidateOutput.trace_dir`)."""
        ...

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        """The candidate's intermediates by llama.cpp name, or None when it cannot trace."""
        ...


@runtime_checkable
class Prepares(Protocol):
    """A candidate with work to do before it knows the token ids (the built-in engine
    dequantises its weights): done while the reference generates the continuation, on a core
    the generation leaves idle, when the machine has one and the memory."""

    def prepare(self, stop: threading.Event) -> None:
        """Do that work now; return early once ``stop`` is set. A failure here is met again,
        and reported, when the candidate runs."""
        ...

    def prepare_bytes(self) -> int:
        """The memory that work fills (and the candidate's run would fill anyway)."""
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


def timed_out(label: str, exc: CommandTimedOut, *, hint: str = "") -> CandidateFailed:
    """The failure of a candidate stopped at its time limit (``hint``: why it may take long)."""
    return CandidateFailed(
        f"the candidate {label} did not finish within {exc.timeout:g}s and was stopped",
        next_step=f"raise --candidate-timeout{hint}, or check the candidate for a hang",
        detail=exc.output_tail,
    )


def check_logits(array: object, *, label: str, n_tokens: int, n_vocab: int) -> F32Array:
    """The candidate's output as float32 ``[n_tokens, n_vocab]``, or a :class:`CandidateFailed`
    naming the candidate and what was expected.

    Whether the values are finite is the comparison's concern: NaN or infinity on either side is
    an outcome of its own (:mod:`bitnet_crossval.crossval.nonfinite`), with the positions named.
    """
    expected = f"a float array of shape [n_tokens, n_vocab] = [{n_tokens}, {n_vocab}]"
    if not isinstance(array, np.ndarray):
        raise CandidateFailed(f"the candidate {label} returned {type(array).__name__}, expected {expected}")
    if array.dtype.kind != "f":
        raise CandidateFailed(f"the candidate {label} returned dtype {array.dtype}, expected {expected}")
    if array.shape != (n_tokens, n_vocab):
        shape = "[" + ", ".join(str(d) for d in array.shape) + "]"
        raise CandidateFailed(f"the candidate {label} returned shape {shape}, expected {expected}")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes infinity, judged later
        return np.asarray(array, dtype=np.float32)


def read_output(path: Path, *, label: str, what: str, shape: tuple[int, int]) -> npt.NDArray[Any]:
    """A ``.npy`` file the candidate wrote, read without trusting it (:func:`~bitnet_crossval.util.npy.read_npy`):
    never more than an array of ``shape`` in the widest float type takes."""
    from bitnet_crossval.util.npy import read_npy

    try:
        return read_npy(path, max_bytes=shape[0] * shape[1] * np.dtype(np.longdouble).itemsize)
    except UnreadableArray as exc:
        if exc.reason == "it does not exist":
            raise CandidateFailed(
                f"the candidate {label} finished but wrote no {path.name}",
                next_step=f"write a float32 .npy of shape [n_tokens, n_vocab] to the {what} path",
            ) from None
        raise CandidateFailed(
            f"the candidate {label} wrote {path.name}, which is not a readable .npy file ({exc.reason})",
            next_step="write it with numpy.save (float32, shape [n_tokens, n_vocab])",
        ) from None


@dataclass(frozen=True, kw_only=True)
class Workspace:
    """The files of one run of a candidate that is a separate process: a new directory of its own
    (its tokens, its output, its log) and, for a trace, a new directory for the intermediates.

    A new directory each run, created by the suite, so nothing the candidate left from a run
    before (a FIFO, a link) is ever written through; :meth:`check` then proves that the
    candidate left both in place before anything in them is read.
    """

    directory: Path
    trace: Path | None
    _identities: tuple[tuple[Path, tuple[int, int]], ...]

    def check(self, label: str) -> None:
        """:class:`CandidateFailed` when the candidate removed or replaced one of the directories."""
        for path, identity in self._identities:
            try:
                info = os.lstat(path)
            except OSError:
                info = None
            if info is None or not stat.S_ISDIR(info.st_mode) or (info.st_dev, info.st_ino) != identity:
                what = "its trace directory" if path == self.trace else "its working directory"
                raise CandidateFailed(
                    f"the candidate {label} removed or replaced {what} {path}, so its output cannot be read",
                    next_step="write only the {out} file (and files inside {trace}); leave the directories in place",
                )


def new_workspace(work_dir: Path, *, trace: bool) -> Workspace:
    """A directory under ``work_dir`` that did not exist before (``candidate-1``, ``candidate-2``, ...)."""
    make_dir(work_dir)
    for n in range(1, 10_000):
        directory = work_dir / f"candidate-{n}"
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise os_error(exc, directory) from exc
        break
    else:  # pragma: no cover (ten thousand runs of one candidate in one work directory)
        raise CandidateFailed(f"no new candidate directory could be made under {work_dir}")
    trace_dir = directory / "trace" if trace else None
    if trace_dir is not None:
        trace_dir.mkdir()
    identities = tuple((path, _identity(path)) for path in (directory, trace_dir) if path is not None)
    return Workspace(directory=directory, trace=trace_dir, _identities=identities)


def _identity(path: Path) -> tuple[int, int]:
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def save_new(path: Path, array: npt.NDArray[Any]) -> None:
    """Write ``array`` to a file that must not exist yet (never through something planted there)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise os_error(exc, path) from exc
    with os.fdopen(fd, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def constant(value: F32Array) -> Callable[[], F32Array]:
    return lambda: value


def traced_from_dir(output: CandidateOutput, *, label: str) -> Traced:
    from bitnet_crossval.crossval.trace import read_trace_dir

    return read_trace_dir(output.trace_dir, label=label) if output.trace_dir is not None else {}
