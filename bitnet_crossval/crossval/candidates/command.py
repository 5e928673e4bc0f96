"""``cmd:<command line>``: any program, split with :func:`shlex.split` and run without a shell.

``{model}``, ``{tokens}`` (a ``.npy`` 1-D int32 array) and ``{out}`` (where it writes a ``.npy``
float32 array) are replaced in its arguments; with none of them, the three paths are appended
in that order. ``{trace}`` (a directory) asks it to write intermediates too. The protocol, with
a worked example, is in docs/howto/candidates.md.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.candidates.base import (
    Candidate,
    CandidateOutput,
    CandidateSetting,
    CandidateSpec,
    ReferenceFacts,
    Traced,
    TraceRequest,
    check_logits,
    traced_from_dir,
)
from bitnet_crossval.errors import BadInput, CandidateFailed, CommandFailed, CommandTimedOut, ProgramNotFound

PLACEHOLDERS = ("{model}", "{tokens}", "{out}")
TRACE_PLACEHOLDER = "{trace}"


@dataclass(frozen=True, kw_only=True)
class CommandSpec(CandidateSpec):
    argv: tuple[str, ...]

    @property
    def can_trace(self) -> bool:
        return any(TRACE_PLACEHOLDER in arg for arg in self.argv)


class CommandKind:
    heads: tuple[str, ...] = ("cmd",)
    syntax: str = "cmd:<command line>"

    def parse(self, text: str) -> CandidateSpec:
        command = text[len("cmd:") :]
        try:
            argv = tuple(shlex.split(command))
        except ValueError as exc:
            raise BadInput(
                f"--candidate {text!r}: the command line cannot be split ({exc})",
                next_step="check the quoting of the command after cmd:",
            ) from None
        if not argv:
            raise BadInput(f"--candidate {text!r} names no command", next_step="write the command after cmd:")
        return CommandSpec(kind="cmd", text=text, argv=argv)

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
        assert isinstance(spec, CommandSpec)
        return CommandCandidate(spec, env=setting.env, n_vocab=setting.n_vocab, timeout=setting.timeout)


class CommandCandidate:
    """Any program: the argument protocol above, a time limit, its output tail on failure."""

    def __init__(self, spec: CommandSpec, *, env: Mapping[str, str], n_vocab: int, timeout: float) -> None:
        self.label = spec.label
        self._argv = spec.argv
        self._env = env
        self._n_vocab = n_vocab
        self._timeout = timeout

    def follow(self, reference: ReferenceFacts) -> Candidate:
        return self

    def argv_for(self, *, model: Path, tokens: Path, out: Path, trace: Path | None) -> list[str]:
        values = {"{model}": str(model), "{tokens}": str(tokens), "{out}": str(out)}
        values[TRACE_PLACEHOLDER] = str(trace) if trace is not None else ""
        argv = []
        for template in self._argv:
            filled = template
            for placeholder, value in values.items():
                filled = filled.replace(placeholder, value)
            argv.append(filled)
        if not any(p in arg for arg in self._argv for p in PLACEHOLDERS):
            argv += [str(model), str(tokens), str(out)]  # none of the three named: they go last, in order
        return argv

    def run(
        self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace_dir: Path | None
    ) -> CandidateOutput:
        from bitnet_crossval.util import proc

        tokens_path = work_dir / "candidate-tokens.npy"
        out = work_dir / "candidate-logits.npy"
        np.save(tokens_path, np.asarray(tokens, dtype=np.int32))
        if trace_dir is not None:
            trace_dir.mkdir(parents=True, exist_ok=True)
        argv = self.argv_for(model=model, tokens=tokens_path, out=out, trace=trace_dir)
        started = time.monotonic()
        try:
            proc.run(argv, env=self._env, timeout=self._timeout, log_path=work_dir / "candidate.log")
        except ProgramNotFound as exc:
            raise BadInput(
                f"the candidate {self.label}: `{exc.program}` was not found",
                next_step="check the command after cmd: (an absolute path avoids PATH surprises)",
            ) from exc
        except CommandTimedOut as exc:
            raise CandidateFailed(
                f"the candidate {self.label} did not finish within {exc.timeout:g}s and was stopped",
                next_step="raise --candidate-timeout, or check the candidate for a hang",
                detail=exc.output_tail,
            ) from exc
        except CommandFailed as exc:
            raise CandidateFailed(
                f"the candidate {self.label} exited with code {exc.returncode}",
                next_step="read the candidate's output above and fix it",
                detail=exc.output_tail,
            ) from exc
        seconds = time.monotonic() - started
        try:
            array = np.load(out, allow_pickle=False)
        except FileNotFoundError:
            raise CandidateFailed(
                f"the candidate {self.label} finished but wrote no {out.name}",
                next_step="write a float32 .npy of shape [n_tokens, n_vocab] to the {out} path",
            ) from None
        except (OSError, ValueError) as exc:
            reason = "it is not in NumPy's .npy format" if "pickled" in str(exc) or "magic" in str(exc) else str(exc)
            raise CandidateFailed(
                f"the candidate {self.label} wrote {out.name}, which is not a readable .npy file ({reason})",
                next_step="write it with numpy.save (float32, shape [n_tokens, n_vocab])",
            ) from exc
        logits = check_logits(array, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        written_trace = trace_dir if trace_dir is not None and any(trace_dir.iterdir()) else None
        return CandidateOutput(logits=logits, seconds=seconds, details={"argv": argv}, trace_dir=written_trace)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        if not any(TRACE_PLACEHOLDER in arg for arg in self._argv):
            return None
        return traced_from_dir(self.run(model, tokens, work_dir=work_dir, trace_dir=work_dir / "candidate-trace"))


KIND = CommandKind()
