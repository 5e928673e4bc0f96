"""What every task shares: the context read once per process, and one way to fail.

Task modules import the library inside their bodies, so loading the collection (every
invocation does) costs little. A task body raises :class:`~bitnet_crossval.errors.SuiteError`;
:func:`suite_task` prints its sentence and next step on stderr and exits with its code through
``invoke.Exit``. Anything else is a bug: one sentence without a traceback, unless ``--verbose``
asked for it. Ctrl-C is exit 130.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from invoke.exceptions import Exit

from bitnet_crossval.errors import Interrupted, SuiteError, UnclassifiedError
from bitnet_crossval.util import ui

if TYPE_CHECKING:
    from bitnet_crossval.context import SuiteContext

F = TypeVar("F", bound=Callable[..., Any])

_context: SuiteContext | None = None


def suite_context() -> SuiteContext:
    """The shared context, created on first use and then reused by every task in this process."""
    global _context
    if _context is None:
        from bitnet_crossval.context import load_context

        _context = load_context()
    return _context


def suite_task(body: F) -> F:
    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.get("verbose"))
        previous = ui.is_verbose()
        ui.set_verbose(verbose)
        try:
            return body(*args, **kwargs)
        except SuiteError as exc:
            _traceback_if(verbose)
            detail = getattr(exc, "detail", "")
            if detail:  # what the failing program itself said, e.g. a candidate's last lines
                ui.say(detail.rstrip(), "info")
            ui.say(exc.render(), "error")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            _traceback_if(verbose)
            ui.say(Interrupted().render(), "error")
            raise Exit(code=130) from None
        except (Exit, SystemExit):
            raise
        except Exception as exc:
            _traceback_if(verbose)
            bug = UnclassifiedError(
                f"unexpected {type(exc).__name__}: {_one_line(str(exc))}",
                next_step="rerun with --verbose for the traceback and report it",
            )
            ui.say(bug.render(), "error")
            raise Exit(code=1) from None
        finally:
            ui.set_verbose(previous)

    return wrapper  # type: ignore[return-value]


def _traceback_if(verbose: bool) -> None:
    if verbose:
        import traceback

        traceback.print_exc(file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def print_json(document: Any) -> None:
    """The only way anything reaches stdout in --json mode: one document, then a newline."""
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()
