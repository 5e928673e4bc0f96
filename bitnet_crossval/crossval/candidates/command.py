"""``cmd:<command line>``: any program, split with :func:`shlex.split` and run without a shell.

``{model}``, ``{tokens}`` (a ``.npy`` 1-D int32 array) and ``{out}`` (where it writes a ``.npy``
float32 array) are replaced in its arguments; with none of them, the three paths are appended
in that order. ``{trace}`` (a directory) asks it to write intermediates too. The protocol, with
a worked example, is in docs/howto/candidates.md.

Each run gets a new directory (:func:`~.base.new_workspace`) and a process group of its own,
stopped at the time limit, on any way out of the suite, and once the program exits (what it
left running); its output is read only from regular files (:func:`~.base.read_output`). A
program that cannot start, exits non-zero, is killed, times out or writes nothing readable is
the candidate's failure (exit 11).
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
    new_workspace,
    read_output,
    save_new,
    timed_out,
    traced_from_dir,
)
from bitnet_crossval.errors import (
    BadInput,
    CandidateFailed,
    CommandFailed,
    CommandTimedOut,
    ProgramCouldNotStart,
    ProgramNotFound,
)

PLACEHOLDERS = ("{model}", "{tokens}", "{out}")
LOG_LIMIT = 64 << 20
"""Bytes of the candidate's output kept in its log file (a candidate printing without end would
otherwise fill the disk)."""
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

    def run(self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace: bool) -> CandidateOutput:
        from bitnet_crossval.util import proc

        workspace = new_workspace(work_dir, trace=trace)
        tokens_path = workspace.directory / "candidate-tokens.npy"
        out = workspace.directory / "candidate-logits.npy"
        save_new(tokens_path, np.asarray(tokens, dtype=np.int32))
        argv = self.argv_for(model=model, tokens=tokens_path, out=out, trace=workspace.trace)
        started = time.monotonic()
        try:
            proc.run(
                argv,
                env=self._env,
                timeout=self._timeout,
                own_group=True,
                log_path=workspace.directory / "candidate.log",
                log_limit=LOG_LIMIT,
            )
        except (ProgramNotFound, ProgramCouldNotStart) as exc:
            reason = "was not found" if isinstance(exc, ProgramNotFound) else exc.reason.join(("(", ")"))
            raise CandidateFailed(
                f"the candidate {self.label} could not start: `{exc.program}` {reason}",
                next_step="check the program after cmd: (an absolute path to an executable file avoids PATH surprises)",
            ) from exc
        except CommandTimedOut as exc:
            raise timed_out(self.label, exc) from exc
        except CommandFailed as exc:
            how = (
                f"was killed by signal {exc.returncode - 128}"
                if exc.returncode > 128
                else f"exited with code {exc.returncode}"
            )
            raise CandidateFailed(
                f"the candidate {self.label} {how}",
                next_step="read the candidate's output above and fix it",
                detail=exc.output_tail,
            ) from exc
        seconds = time.monotonic() - started
        workspace.check(self.label)
        array = read_output(out, label=self.label, what="{out}", shape=(len(tokens), self._n_vocab))
        logits = check_logits(array, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        written = workspace.trace if workspace.trace is not None and any(workspace.trace.iterdir()) else None
        return CandidateOutput(logits=logits, seconds=seconds, details={"argv": argv}, trace_dir=written)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        if not any(TRACE_PLACEHOLDER in arg for arg in self._argv):
            return None
        return traced_from_dir(self.run(model, tokens, work_dir=work_dir, trace=True), label=self.label)


KIND = CommandKind()
