"""``py:module:function``: a Python callable ``f(model_path: str, tokens: np.ndarray)`` returning
the logits array (with a ``trace`` keyword argument, a directory path, when the function accepts
one and a trace was asked for).

The function runs in a child process (:mod:`.py_runner`, started with this interpreter through
:func:`bitnet_crossval.util.proc.run`), under the candidate time limit, in a process group of
its own: ``sys.exit``, ``os._exit``, any ``BaseException``, a crash, a hang or its prints are its
failure (exit 11, its last lines shown) and never end or disturb the suite. The module is
imported once when the candidate is made, so a wrong module or function name is reported before
the reference runs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.candidates import py_runner
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
from bitnet_crossval.crossval.defaults import DEFAULT_CANDIDATE_TIMEOUT
from bitnet_crossval.errors import BadInput, CandidateFailed, CommandFailed, CommandTimedOut
from bitnet_crossval.util import ui

RUNNER = Path(py_runner.__file__)
LOG_LIMIT = 64 << 20
"""Bytes of the candidate's output kept in its log file (a candidate printing without end would
otherwise fill the disk)."""


@dataclass(frozen=True, kw_only=True)
class PythonSpec(CandidateSpec):
    module: str
    function: str


class PythonKind:
    heads: tuple[str, ...] = ("py",)
    syntax: str = "py:module:function"

    def parse(self, text: str) -> CandidateSpec:
        target = text[len("py:") :]
        module, sep, function = target.rpartition(":")
        if not sep or not module or not function.isidentifier():
            raise BadInput(
                f"--candidate {text!r} is not py:module:function",
                next_step="name an importable module and a function in it, e.g. py:my_engine.crossval:logits",
            )
        return PythonSpec(kind="py", text=text, module=module, function=function)

    def build(self, spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
        assert isinstance(spec, PythonSpec)
        return PythonCandidate(spec, n_vocab=setting.n_vocab, env=setting.env, timeout=setting.timeout)


class PythonCandidate:
    """A function in an importable module, called in a child process."""

    def __init__(
        self,
        spec: PythonSpec,
        *,
        n_vocab: int,
        env: Mapping[str, str] | None = None,
        timeout: float = DEFAULT_CANDIDATE_TIMEOUT,
    ) -> None:
        self.label = spec.label
        self._spec = spec
        self._n_vocab = n_vocab
        self._env = env
        self._timeout = timeout
        with tempfile.TemporaryDirectory(prefix="bitnet-py-candidate-", ignore_cleanup_errors=True) as tmp:
            status = self._child(Path(tmp), mode="check", model=None, tokens=None, trace=None)
        self.accepts_trace = bool(status.get("accepts_trace"))

    def follow(self, reference: ReferenceFacts) -> Candidate:
        return self

    def run(self, model: Path, tokens: npt.NDArray[np.int32], *, work_dir: Path, trace: bool) -> CandidateOutput:
        workspace = new_workspace(work_dir, trace=trace and self.accepts_trace)
        tokens_path = workspace.directory / "candidate-tokens.npy"
        save_new(tokens_path, np.asarray(tokens, dtype=np.int32))
        started = time.monotonic()
        status = self._child(workspace.directory, mode="run", model=model, tokens=tokens_path, trace=workspace.trace)
        elapsed = time.monotonic() - started
        workspace.check(self.label)
        if status.get("stage") == "return":
            raise CandidateFailed(
                f"the candidate {self.label} returned {status.get('type')}, expected a float array of shape "
                f"[n_tokens, n_vocab] = [{len(tokens)}, {self._n_vocab}]"
            )
        array = read_output(
            workspace.directory / "candidate-logits.npy",
            label=self.label,
            what="returned array's",
            shape=(len(tokens), self._n_vocab),
        )
        logits = check_logits(array, label=self.label, n_tokens=len(tokens), n_vocab=self._n_vocab)
        written = workspace.trace if workspace.trace is not None and any(workspace.trace.iterdir()) else None
        seconds = float(status.get("seconds") or elapsed)
        return CandidateOutput(
            logits=logits, seconds=seconds, details={"process_seconds": round(elapsed, 4)}, trace_dir=written
        )

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], *, request: TraceRequest, work_dir: Path
    ) -> Traced | None:
        if not self.accepts_trace:
            return None
        return traced_from_dir(self.run(model, tokens, work_dir=work_dir, trace=True), label=self.label)

    # --- the child process ---

    def _child(
        self, directory: Path, *, mode: str, model: Path | None, tokens: Path | None, trace: Path | None
    ) -> dict[str, Any]:
        """Run the runner in ``directory``; its status when the function was found (and, for
        ``run``, returned), else the candidate's failure or bad input."""
        from bitnet_crossval.util import proc

        status_path = directory / "status.json"
        request = directory / "request.json"
        request.write_text(
            json.dumps(
                {
                    "mode": mode,
                    "module": self._spec.module,
                    "function": self._spec.function,
                    "model": None if model is None else str(model),
                    "tokens": None if tokens is None else str(tokens),
                    "out": str(directory / "candidate-logits.npy"),
                    "trace": None if trace is None else str(trace),
                    "status": str(status_path),
                }
            ),
            encoding="utf-8",
        )
        argv = [sys.executable, str(RUNNER), str(request)]
        failure: CommandFailed | None = None
        try:
            proc.run(
                argv,
                env=self._env,
                timeout=self._timeout,
                own_group=True,
                log_path=directory / "candidate.log",
                log_limit=LOG_LIMIT,
                on_line=ui.debug if ui.is_verbose() else None,
            )
        except CommandTimedOut as exc:
            raise timed_out(self.label, exc) from exc
        except CommandFailed as exc:
            failure = exc
        status = _read_status(status_path)
        return self._judge(status, failure, mode=mode)

    def _judge(self, status: dict[str, Any] | None, failure: CommandFailed | None, *, mode: str) -> dict[str, Any]:
        detail = failure.output_tail if failure is not None else ""
        stage = None if status is None else status.get("stage")
        if stage == "import" and status is not None:
            return self._import_failure(status, detail)
        if stage == "lookup":
            raise BadInput(
                f"the candidate {self.label}: {self._spec.module} has no function {self._spec.function!r}",
                next_step="name a function defined in that module",
            )
        if stage == "call" and status is not None:
            raise CandidateFailed(
                f"the candidate {self.label} {_raised(status)}",
                next_step="rerun with --verbose for the traceback",
                detail=_with_traceback(detail, status),
            )
        wanted = "ready" if mode == "check" else "returned"
        if status is not None and (stage == "return" or (stage == wanted and failure is None)):
            return status
        code = failure.returncode if failure is not None else 0
        how = f"was killed by signal {code - 128}" if code > 128 else f"ended its process with exit code {code}"
        raise CandidateFailed(
            f"the candidate {self.label} {how} before returning logits (os._exit, or a crash)",
            next_step="read the candidate's output above and fix it",
            detail=detail,
        )

    def _import_failure(self, status: dict[str, Any], detail: str) -> dict[str, Any]:
        if status.get("type") in _EXITS:
            raise CandidateFailed(
                f"the candidate {self.label} {_raised(status)} while its module {self._spec.module} was imported",
                next_step="do not end the process at import: return logits from the function",
                detail=_with_traceback(detail, status),
            )
        message = status.get("message") or "(no message)"
        raise BadInput(
            f"the candidate {self.label}: module {self._spec.module!r} cannot be imported "
            f"({status.get('type')}: {message})",
            next_step="run from the directory that holds the module, or install it into this environment",
        )


_EXITS = frozenset({"SystemExit", "KeyboardInterrupt", "GeneratorExit"})


def _raised(status: dict[str, Any]) -> str:
    if status.get("type") == "SystemExit":
        return f"called sys.exit({status.get('exit_code')!r}) instead of returning logits"
    return f"raised {status.get('type')}: {status.get('message') or '(no message)'}"


def _with_traceback(detail: str, status: dict[str, Any]) -> str:
    """The candidate's own output, and with --verbose its traceback."""
    if not ui.is_verbose():
        return detail
    return (detail.rstrip() + "\n" if detail.strip() else "") + str(status.get("traceback") or "")


def _read_status(path: Path) -> dict[str, Any] | None:
    from bitnet_crossval.util.files import read_json_file

    status = read_json_file(path)
    return status if isinstance(status, dict) else None


KIND = PythonKind()
