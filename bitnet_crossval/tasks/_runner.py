"""What every task shares: its options from one table, the context read once per process, one
way to fail, and one way to print JSON.

A task is declared with :func:`suite_task` and the table of its options (see
:mod:`bitnet_crossval.util.options`); the table gives invoke the flags and their help, and the
task body gets the parsed values. A body raises :class:`~bitnet_crossval.errors.SuiteError`;
the runner prints its sentence and next step on stderr and exits with its code through
``invoke.Exit``. Anything else is a bug: one sentence without a traceback, unless ``--verbose``
asked for it. Ctrl-C is exit 130, SIGTERM 143 and SIGHUP 129, each after the command's own
cleanup ran (:func:`bitnet_crossval.util.signals.stop_on_termination`). With ``--format json`` the
runner also prints the one JSON document of a failure on stdout (every task the same shape),
unless the body printed its own.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from invoke.exceptions import Exit
from invoke.parser.argument import Argument
from invoke.tasks import Task

from bitnet_crossval.errors import Interrupted, SuiteError, TerminationRequested, UnclassifiedError
from bitnet_crossval.util import signals, stdio, ui
from bitnet_crossval.util.files import dump_json
from bitnet_crossval.util.options import FORMAT, VERBOSE, Option, OptionValues, RawValue

if TYPE_CHECKING:
    from bitnet_crossval.context import SuiteContext

Body = Callable[[OptionValues], None]
ErrorFields = Callable[[Mapping[str, RawValue]], dict[str, Any]]

_context: SuiteContext | None = None


class _Run:
    """What the runner knows about the task running now (tasks do not nest)."""

    json_mode = False
    printed_document = False


def suite_context() -> SuiteContext:
    """The shared context, created on first use and then reused by every task in this process."""
    global _context
    if _context is None:
        from bitnet_crossval.context import load_context

        _context = load_context()
    return _context


def suite_task(
    *, options: tuple[Option[Any], ...], json_error: ErrorFields | None = None, name: str | None = None
) -> Callable[[Body], SuiteTask]:
    """Make ``body`` an invoke task whose flags are ``options``.

    ``json_error`` adds command-specific fields to the JSON document of a failure (e.g. the
    backend a preflight was about); the document always holds ``command``, ``ok`` (false) and
    ``error`` (:meth:`SuiteError.to_json`).
    """

    def decorate(body: Body) -> SuiteTask:
        command = name or body.__name__.replace("_", "-")

        @functools.wraps(body)
        def run(c: Any, **raw: RawValue) -> None:
            _run_body(body, command=command, options=options, raw=raw, json_error=json_error)

        parameters = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        parameters += [
            inspect.Parameter(
                option.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=False if option.flag_kind == "flag" else None,
            )
            for option in options
        ]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        return SuiteTask(run, options=options, name=name)

    return decorate


class SuiteTask(Task[Any]):
    """An invoke task whose arguments come from an option table, not from a signature.

    invoke would cast a value to the type of its default and fail with a traceback on bad
    input; here every value reaches the table's parser as the text typed, so a bad value is one
    sentence and exit 6. The flag's kind still tells invoke's help how to show it (``=INT``).
    """

    def __init__(self, body: Callable[..., Any], *, options: tuple[Option[Any], ...], name: str | None) -> None:
        self.options = options
        super().__init__(body, name=name, auto_shortflags=False)

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        return [_argument(option) for option in self.options]


class _TextArgument(Argument):
    """An argument that keeps the text typed; the option table parses it."""

    def set_value(self, value: Any, cast: bool = True) -> None:
        self.raw_value = value
        self._value = value


def _argument(option: Option[Any]) -> Argument:
    kind: type = {"flag": bool, "int": int, "text": str}[option.flag_kind]
    flag_name = option.name.replace("_", "-")
    return _TextArgument(
        names=(flag_name,),
        # invoke aliases the flag to its attribute name: an alias of itself would never resolve.
        attr_name=option.name if option.name != flag_name else None,
        kind=kind,
        default=False if kind is bool else None,
        # invoke takes a word for a positional argument only while it has no value, and refuses
        # a command line without one in its own words (exit 1), as it does an unknown flag.
        positional=option.positional,
        help=option.help_text(),
    )


def _run_body(
    body: Body,
    *,
    command: str,
    options: tuple[Option[Any], ...],
    raw: Mapping[str, RawValue],
    json_error: ErrorFields | None,
) -> None:
    stdio.guard_standard_fds()
    verbose = bool(raw.get(VERBOSE.name))
    previous = ui.is_verbose()
    ui.set_verbose(verbose)
    _Run.json_mode = _wants_json(raw)
    _Run.printed_document = False
    try:
        values = OptionValues(options, raw)
        values.check_all()
        with signals.stop_on_termination():
            body(values)
    except SuiteError as exc:
        _fail(exc, command=command, raw=raw, json_error=json_error, verbose=verbose)
        detail = getattr(exc, "detail", "")
        if detail:  # what the failing program itself said, e.g. a candidate's last lines
            ui.say(detail.rstrip(), "info")
        ui.say(exc.render(), "error")
        raise Exit(code=exc.exit_code) from None
    except KeyboardInterrupt:
        interrupted = Interrupted()
        _fail(interrupted, command=command, raw=raw, json_error=json_error, verbose=verbose)
        ui.say(interrupted.render(), "error")
        raise Exit(code=interrupted.exit_code) from None
    except TerminationRequested as signalled:
        # Everything on the way out has run (children stopped, temporary directories removed).
        stopped = signalled.as_error()
        _fail(stopped, command=command, raw=raw, json_error=json_error, verbose=verbose)
        ui.say(stopped.render(), "error")
        raise Exit(code=stopped.exit_code) from None
    except (Exit, SystemExit):
        raise
    except Exception as exc:
        bug = UnclassifiedError(
            f"unexpected {type(exc).__name__}: {_one_line(str(exc))}",
            next_step="rerun with --verbose for the traceback and report it",
        )
        _fail(bug, command=command, raw=raw, json_error=json_error, verbose=verbose)
        ui.say(bug.render(), "error")
        raise Exit(code=bug.exit_code) from None
    finally:
        ui.set_verbose(previous)
        _Run.json_mode = False


def _wants_json(raw: Mapping[str, RawValue]) -> bool:
    """``--format json`` (or preflight's ``--json``), read before the other values are parsed, so
    that a bad value of another option is reported as a JSON document too."""
    return str(raw.get(FORMAT.name) or "").strip() == "json" or raw.get("json") is True


def _fail(
    exc: SuiteError,
    *,
    command: str,
    raw: Mapping[str, RawValue],
    json_error: ErrorFields | None,
    verbose: bool,
) -> None:
    if verbose:
        import traceback

        traceback.print_exc(file=stdio.SafeStderr())
    if _Run.json_mode and not _Run.printed_document:
        extra = json_error(raw) if json_error is not None else {}
        print_json({"command": command, "ok": False, **extra, "error": exc.to_json()})


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def print_json(document: Any) -> None:
    """The only way anything reaches stdout in JSON mode: one document, then a newline.

    A closed or broken stdout loses the document (nobody could read it) and says so on stderr;
    it never changes the command's exit code.
    """
    _Run.printed_document = True
    if not stdio.write_stdout(dump_json(document).decode("utf-8")):
        ui.warn("stdout is closed or cannot be written, so the JSON document was not printed")
