"""Every fatal error of the suite and its exit code, defined in one place.

The exit codes are part of the suite's public interface (docs/reference/cli.md). Each
subclass of :class:`SuiteError` owns one code, so a code is never chosen at a call site.
Every error carries one sentence of what went wrong and one of what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar


class SuiteError(Exception):
    """A failure that ends a command with its documented exit code (docs/reference/cli.md)."""

    exit_code: ClassVar[int] = 1
    default_next_step: ClassVar[str] = "rerun with --verbose to see the details"

    def __init__(
        self,
        message: str,
        *,
        next_step: str | None = None,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step or self.default_next_step
        self.log_path = log_path

    def to_json(self) -> dict[str, object]:
        """The error as every ``--format json`` document carries it."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "next_step": self.next_step,
            "exit_code": self.exit_code,
            "log": None if self.log_path is None else str(self.log_path),
        }

    def render(self) -> str:
        """The lines a user sees: what went wrong, where the log is, what to do next."""
        lines = [f"error: {self.message}"]
        if self.log_path is not None:
            lines.append(f"  log: {self.log_path}")
        lines.append(f"  next: {self.next_step}")
        return "\n".join(lines)


class UnclassifiedError(SuiteError):
    exit_code = 1


class BackendUnavailable(SuiteError):
    """The backend is not usable and the caller did not allow a repair."""

    exit_code = 1


class LockTimeout(SuiteError):
    exit_code = 1
    default_next_step = "check whether another setup is still running, or raise BITNET_LOCK_TIMEOUT (seconds)"


class ReexecTargetMissing(SuiteError):
    exit_code = 2
    default_next_step = "install invoke into this environment (python -m pip install invoke) and rerun the command"


class NetworkError(SuiteError):
    exit_code = 3
    default_next_step = "check the network, or use an offline source: LLAMA_CPP_SOURCE=pypi or a local directory"


class PermissionDenied(SuiteError):
    exit_code = 4
    default_next_step = "make the directory writable, or point BITNET_CACHE_DIR at a writable one"


class BuildFailed(SuiteError):
    exit_code = 5
    default_next_step = "read the build log above; fix the toolchain or the source and rerun"


class BadInput(SuiteError):
    exit_code = 6
    default_next_step = "check the arguments (invoke --help <task>) and rerun"


class RevalidationFailed(SuiteError):
    exit_code = 8
    default_next_step = "run `invoke rebuild --verbose` and `invoke preflight --verbose` to see what detection finds"


class ParityFailed(SuiteError):
    exit_code = 10
    default_next_step = "rerun with --trace to see where the candidate diverges"


class Interrupted(SuiteError):
    """Ctrl-C (SIGINT): the shells' 128 + 2."""

    exit_code = 130

    def __init__(self, *, next_step: str | None = None) -> None:
        super().__init__(
            "interrupted (Ctrl-C); nothing half-written was kept",
            next_step=next_step or "rerun the command; finished downloads and builds are reused",
        )


class Stopped(SuiteError):
    """SIGTERM or SIGHUP ended the command: the shells' 128 + N (143, 129)."""

    exit_code = 143

    def __init__(self, signal_name: str) -> None:
        super().__init__(
            f"stopped by {signal_name}; the processes this command started were stopped and its temporary "
            "files removed",
            next_step="rerun the command; finished downloads and builds are reused",
        )


class HungUp(Stopped):
    exit_code = 129


class TerminationRequested(BaseException):
    """SIGTERM or SIGHUP arrived (see :func:`bitnet_crossval.util.signals.stop_on_termination`).

    A ``BaseException``, as ``KeyboardInterrupt`` is: no ``except Exception`` on the way out may
    swallow it, and every ``finally`` and context manager runs (children stopped, temporary
    directories removed). The task runner turns it into :class:`Stopped` or :class:`HungUp`.
    """

    def __init__(self, signum: int, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signum = signum
        self.signal_name = signal_name

    def as_error(self) -> Stopped:
        return HungUp(self.signal_name) if self.signal_name == "SIGHUP" else Stopped(self.signal_name)


class CandidateFailed(SuiteError):
    """The candidate could not start, crashed, exited, timed out, or returned something that is
    not logits: no comparison could be made (a candidate that runs but disagrees is a parity
    failure, exit 10)."""

    exit_code = 11
    default_next_step = "fix the candidate so it writes float32 logits of shape [n_tokens, n_vocab]"

    def __init__(self, message: str, *, next_step: str | None = None, detail: str = "") -> None:
        super().__init__(message, next_step=next_step)
        self.detail = detail
        """The tail of the candidate's own output, shown above the error line."""


class SelfcheckFailed(SuiteError):
    """A deliberate fault of the self-check was not caught, or not located at its site: the
    checker, not a candidate, is wrong."""

    exit_code = 12
    default_next_step = "read the self-check table above: the cross-validation itself needs fixing"


def error_class_for(exit_code: int) -> type[SuiteError]:
    """The error that owns ``exit_code`` (for a command that passes on the code of the work it ran,
    as a suite passes on its cases'); :class:`UnclassifiedError` for a code no error owns."""
    owners: tuple[type[SuiteError], ...] = (
        UnclassifiedError,
        ReexecTargetMissing,
        NetworkError,
        PermissionDenied,
        BuildFailed,
        BadInput,
        RevalidationFailed,
        ParityFailed,
        CandidateFailed,
        SelfcheckFailed,
    )
    return next((owner for owner in owners if owner.exit_code == exit_code), UnclassifiedError)


class CommandFailed(SuiteError):
    """A subprocess exited non-zero. Callers classify it into one of the errors above."""

    exit_code = 1

    def __init__(
        self,
        argv: Sequence[str],
        returncode: int,
        output_tail: str,
        *,
        log_path: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        super().__init__(
            f"`{argv[0]}` exited with code {returncode}",
            log_path=log_path,
        )


class CommandTimedOut(CommandFailed):
    """A subprocess ran past its time limit and was stopped."""

    def __init__(self, argv: Sequence[str], timeout: float, output_tail: str, *, log_path: Path | None = None) -> None:
        super().__init__(argv, 124, output_tail, log_path=log_path)
        self.timeout = timeout
        self.message = f"`{argv[0]}` did not finish within {timeout:g}s and was stopped"


class ProgramCouldNotStart(SuiteError):
    """A program exists but the system would not run it (a directory, no execute permission, not
    an executable format). Callers classify it (a candidate's is exit 11)."""

    exit_code = 1

    def __init__(self, program: str, reason: str) -> None:
        self.program = program
        self.reason = reason
        super().__init__(
            f"`{program}` could not be started: {reason}",
            next_step="check that the path names an executable program (chmod +x, or a #! line for a script)",
        )


class UnreadableArray(SuiteError):
    """A ``.npy`` file that is missing, not a regular file, or not an array the suite can load
    (see :mod:`bitnet_crossval.util.npy`). Callers classify it: a candidate's output is exit 11."""

    exit_code = 1

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path} cannot be read as an array: {reason}")


class ProgramNotFound(SuiteError):
    """An executable the suite needs is not on PATH."""

    exit_code = 1

    def __init__(self, program: str, *, hint: str | None = None) -> None:
        self.program = program
        super().__init__(
            f"`{program}` was not found on PATH",
            next_step=hint or f"install {program} (for example with apt-get) and rerun",
        )
