"""invoke preflight: is the C++ reference backend usable? With --repair, make it so."""

from __future__ import annotations

from typing import Any

from invoke.tasks import task

from bitnet_crossval.errors import SuiteError
from bitnet_crossval.util import ui

from ._runner import print_json, suite_context, suite_task


@task(
    help={
        "backend": "llama or bitnet",
        "repair": "auto (install when missing), never, or always (reinstall); "
        "default: never when a CI variable (CI, GITHUB_ACTIONS, ...) is set, else auto",
        "verbose": "show every command and a traceback on errors",
        "json": "print one JSON document on stdout",
    }
)
@suite_task
def preflight(c: Any, backend: str = "llama", repair: str = "", verbose: bool = False, json: bool = False) -> None:
    """Check that a C++ reference backend is usable; repair it when allowed."""
    from bitnet_crossval.backends.specs import spec_for
    from bitnet_crossval.repair.preflight import repair_mode_from, run_preflight

    try:
        ctx = suite_context()
        spec = spec_for(backend)
        mode = repair_mode_from(repair or None, ctx.env)
        report = run_preflight(ctx, spec, mode=mode)
    except SuiteError as exc:
        if json:
            print_json(
                {
                    "backend": backend,
                    "available": False,
                    "error": exc.to_json(),
                }
            )
        raise
    ui.say(report.summary(), "ok")
    if json:
        print_json(report.to_json())
