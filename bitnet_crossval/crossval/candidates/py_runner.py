"""The child process that runs a ``py:module:function`` candidate.

Run as a script with the suite's interpreter (``python py_runner.py REQUEST``), never imported
by the suite: the candidate runs in a process of its own, so whatever it does (``sys.exit``,
``os._exit``, a ``BaseException``, a crash in a C extension, prints) ends or disturbs only
that process. The suite reads what happened from the status file this script writes, and the
candidate's output from the pipe.

``REQUEST`` names a JSON file: ``mode`` (``check``: import the module and find the function;
``run``: also call it), ``module``, ``function``, ``model``, ``tokens`` (a ``.npy`` of int32
ids), ``out`` (where the returned array is saved), ``trace`` (a directory, or null) and
``status`` (where the outcome is written, as JSON). This file imports nothing of the suite, so
the candidate sees the same ``sys.path`` as ``python -m`` gives: the current directory first.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    status = Path(request["status"])
    # As for `python -m`: the current directory first, and not this script's own directory
    # (which holds modules named like a user's: python.py, command.py, ...). With
    # PYTHONSAFEPATH set, Python did not put the script's directory there in the first place.
    own = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if os.path.abspath(p or ".") != own]
    try:
        module = importlib.import_module(request["module"])
    except BaseException as exc:  # SystemExit and friends are the candidate's failure too
        _report(status, stage="import", **_describe(exc))
        return 3
    function = getattr(module, request["function"], None)
    if not callable(function):
        _report(status, stage="lookup")
        return 3
    accepts_trace = _accepts_keyword(function, "trace")
    if request["mode"] == "check":
        _report(status, stage="ready", accepts_trace=accepts_trace)
        return 0
    return _call(request, function, status, accepts_trace=accepts_trace)


def _call(request: dict[str, Any], function: Callable[..., Any], status: Path, *, accepts_trace: bool) -> int:
    import numpy as np

    tokens = np.load(request["tokens"], allow_pickle=False)
    kwargs = {"trace": request["trace"]} if request["trace"] is not None and accepts_trace else {}
    started = time.monotonic()
    try:
        result = function(request["model"], tokens, **kwargs)
    except BaseException as exc:  # whatever the function raises is its failure
        _report(status, stage="call", **_describe(exc))
        return 3
    seconds = time.monotonic() - started
    if not isinstance(result, np.ndarray):
        _report(status, stage="return", type=type(result).__name__)
        return 3
    if result.dtype.hasobject:
        _report(status, stage="return", type=f"an array of dtype {result.dtype}")
        return 3
    np.save(request["out"], result, allow_pickle=False)
    _report(status, stage="returned", seconds=seconds, traced="trace" in kwargs)
    return 0


def _describe(exc: BaseException) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "type": type(exc).__name__,
        "message": " ".join(str(exc).split()),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    if isinstance(exc, SystemExit):
        fields["exit_code"] = exc.code if exc.code is None or isinstance(exc.code, int) else str(exc.code)
    return fields


def _report(status: Path, **fields: Any) -> None:
    tmp = status.with_name(status.name + ".tmp")
    tmp.write_text(json.dumps(fields), encoding="utf-8")
    os.replace(tmp, status)


def _accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


if __name__ == "__main__":
    code = main(sys.argv)
    # Once the outcome is written the process ends, even if the candidate left threads running;
    # what it printed is flushed first, unless it closed or replaced the streams.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    os._exit(code)
