"""Running the hf candidate's child from the suite: its command line, its run, its failures.

:func:`hf_argv` builds the child's command line; :func:`run_hf` writes the tokens, runs the
child through :func:`bitnet_crossval.util.proc.run` with a time limit and reads what it wrote.
A child that could not be started, crashed, ran out of time or wrote no logits is a
:class:`CandidateFailed` with the tail of its output; a child that refused its input (exit 6:
an architecture transformers cannot read, a configuration it cannot express) is a
:class:`BadInput` with the child's own sentence and next step.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.candidates.base import timed_out
from bitnet_crossval.errors import (
    BadInput,
    CandidateFailed,
    CommandFailed,
    CommandTimedOut,
    PermissionDenied,
    ProgramNotFound,
    SuiteError,
)

CHILD_MODULE = "bitnet_crossval.crossval.hf"
TOKENS_FILE = "hf-tokens.npy"
LOGITS_FILE = "hf-logits.npy"
DETAILS_FILE = "hf-details.json"
LOG_FILE = "hf-candidate.log"

F32Array = npt.NDArray[np.float32]


@dataclass(frozen=True, kw_only=True)
class HfRun:
    logits: npt.NDArray[Any]
    """As the child wrote them: the caller checks shape and values against the reference."""
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    trace_dir: Path | None = None
    argv: list[str] = field(default_factory=list)


def checkpoint_dir(text: str) -> Path:
    """The directory of ``hf:PATH``: a Hugging Face checkpoint (config.json and weights)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise BadInput(
            f"--candidate hf:{text}: {path} is not a directory",
            next_step="pass the directory of a Hugging Face checkpoint (config.json and *.safetensors)",
        )
    if not (path / "config.json").is_file():
        raise BadInput(
            f"--candidate hf:{text}: {path} holds no config.json, so it is not a Hugging Face checkpoint",
            next_step="pass the directory of a Hugging Face checkpoint (config.json and *.safetensors)",
        )
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise BadInput(
            f"--candidate hf:{text}: {path} holds no weights (*.safetensors or *.bin)",
            next_step="pass the directory of a complete Hugging Face checkpoint",
        )
    return path.absolute()


def hf_argv(
    *,
    model: Path,
    tokens: Path,
    out: Path,
    checkpoint: Path | None = None,
    trace_dir: Path | None = None,
    trace_positions: Sequence[int] | None = None,
    trace_layers: tuple[int, int] | None = None,
    trace_names: str | None = None,
    cache_root: Path | None = None,
    details: Path | None = None,
    threads: int | None = None,
    python: str | None = None,
) -> list[str]:
    """The child's command line: ``python -m bitnet_crossval.crossval.hf ...`` (this interpreter
    unless ``python`` names another). Without ``cache_root`` the GGUF is converted every time."""
    argv = [python or sys.executable, "-m", CHILD_MODULE, "--model", str(model), "--tokens", str(tokens)]
    argv += ["--out", str(out)]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    if trace_dir is not None:
        argv += ["--trace", str(trace_dir)]
        if trace_positions is not None:
            argv += ["--trace-positions", ",".join(str(int(p)) for p in trace_positions)]
        if trace_layers is not None:
            argv += ["--trace-layers", f"{trace_layers[0]}-{trace_layers[1]}"]
        if trace_names is not None:
            argv += ["--trace-names", trace_names]
    if cache_root is not None:
        argv += ["--cache-root", str(cache_root)]
    if details is not None:
        argv += ["--details", str(details)]
    if threads:
        argv += ["--threads", str(int(threads))]
    return argv


def run_hf(
    *,
    model: Path,
    tokens: npt.NDArray[np.integer],
    work_dir: Path,
    env: Mapping[str, str],
    timeout: float | None,
    checkpoint: Path | None = None,
    trace_dir: Path | None = None,
    trace_positions: Sequence[int] | None = None,
    trace_layers: tuple[int, int] | None = None,
    trace_names: str | None = None,
    cache_root: Path | None = None,
    threads: int | None = None,
    label: str = "hf",
    on_line: Callable[[str], None] | None = None,
) -> HfRun:
    """Run the child on ``tokens``; its output is kept in ``work_dir`` (``hf-candidate.log``)."""
    from bitnet_crossval.util import proc

    work_dir.mkdir(parents=True, exist_ok=True)
    tokens_path = work_dir / TOKENS_FILE
    out = work_dir / LOGITS_FILE
    details_path = work_dir / DETAILS_FILE
    for stale in (out, details_path):
        stale.unlink(missing_ok=True)
    np.save(tokens_path, np.asarray(tokens, dtype=np.int32), allow_pickle=False)
    if trace_dir is not None:
        trace_dir.mkdir(parents=True, exist_ok=True)
    argv = hf_argv(
        model=model,
        tokens=tokens_path,
        out=out,
        checkpoint=checkpoint,
        trace_dir=trace_dir,
        trace_positions=trace_positions,
        trace_layers=trace_layers,
        trace_names=trace_names,
        cache_root=cache_root,
        details=details_path,
        threads=threads,
    )
    started = time.monotonic()
    try:
        proc.run(argv, env=child_env(env), timeout=timeout, log_path=work_dir / LOG_FILE, on_line=on_line)
    except ProgramNotFound as exc:
        raise BadInput(
            f"the candidate {label}: the Python interpreter {exc.program} was not found",
            next_step="run the suite from the environment it is installed in",
        ) from exc
    except CommandTimedOut as exc:
        raise timed_out(label, exc, hint=" (the first load of a large GGUF takes minutes)") from exc
    except CommandFailed as exc:
        raise _child_error(label, exc) from exc
    seconds = time.monotonic() - started
    try:
        logits = np.load(out, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CandidateFailed(
            f"the candidate {label} finished but wrote no readable {out.name} ({exc})",
            next_step=f"read the candidate's log {work_dir / LOG_FILE}",
        ) from exc
    written = trace_dir if trace_dir is not None and any(trace_dir.glob("*.npy")) else None
    return HfRun(logits=logits, seconds=seconds, details=_read_details(details_path), trace_dir=written, argv=argv)


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """The suite's environment plus the child's defaults (offline, no progress bars), which a
    variable already set wins over."""
    from bitnet_crossval.crossval.hf.runner import CHILD_ENV_DEFAULTS

    return {**CHILD_ENV_DEFAULTS, **env}


def _child_error(label: str, exc: CommandFailed) -> SuiteError:
    """The child's own ``error:``/``next:`` lines when it wrote them, under the candidate's label;
    its bad input (exit 6) and an unwritable cache (exit 4) keep their kind."""
    message, next_step = _error_lines(exc.output_tail)
    if message and exc.returncode in (BadInput.exit_code, PermissionDenied.exit_code):
        kind = BadInput if exc.returncode == BadInput.exit_code else PermissionDenied
        return kind(f"the candidate {label}: {message}", next_step=next_step)
    if message:
        return CandidateFailed(
            f"the candidate {label} failed: {message}",
            next_step=next_step or "read the candidate's output above",
            detail=exc.output_tail,
        )
    return CandidateFailed(
        f"the candidate {label} exited with code {exc.returncode}",
        next_step="read the candidate's output above (a code above 128 is a signal: 137 is often the memory limit)",
        detail=exc.output_tail,
    )


def _error_lines(output: str) -> tuple[str, str | None]:
    message, next_step = "", None
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith("error: "):
            message, next_step = stripped[len("error: ") :], None
        elif stripped.startswith("next: ") and message:
            next_step = stripped[len("next: ") :]
    return message, next_step


def _read_details(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}
