"""invoke crossval-selfcheck: prove the cross-validation catches and locates deliberate bugs."""

from __future__ import annotations

from typing import Any

from invoke.tasks import task

from bitnet_crossval.errors import SuiteError, UnclassifiedError

from ._runner import print_json, suite_context, suite_task


@task(
    # Many options share a first letter; invoke's automatic short flags would hand -h to --threads.
    auto_shortflags=False,
    help={
        "backend": "the reference: llama or bitnet (default llama)",
        "repair": "auto, never or always, as for preflight; default: never when a CI variable is set, else auto",
        "arch": "check only this synthetic architecture: llama, bitnet or gemma3 (default all three)",
        "format": "text (default) or json (one JSON document on stdout)",
        "verbose": "show every command and a traceback on errors",
    },
)
@suite_task
def crossval_selfcheck(
    c: Any, backend: str = "llama", repair: str = "", arch: str = "", format: str = "text", verbose: bool = False
) -> None:
    """Run the crossval against deliberately broken candidates; each must be caught and located."""
    from bitnet_crossval.backends.specs import spec_for
    from bitnet_crossval.crossval.options import parse_choice, parse_format
    from bitnet_crossval.crossval.selfcheck import ARCHITECTURES, print_selfcheck, run_selfcheck
    from bitnet_crossval.repair.preflight import preflight_for

    output_format = parse_format(format)
    try:
        spec = spec_for(backend)
        chosen = parse_choice(arch, option="--arch", choices=("all", *ARCHITECTURES), default="all")
        architectures = ARCHITECTURES if chosen == "all" else (chosen,)
        ctx = suite_context()
        preflight_for(ctx, spec.name, repair)
        cases = run_selfcheck(ctx, backend=spec.name, architectures=architectures)
    except SuiteError as exc:
        if output_format == "json":
            print_json({"ok": False, "error": exc.to_json()})
        raise
    print_selfcheck(cases)
    failed = [case for case in cases if not case.ok]
    if output_format == "json":
        print_json({"ok": not failed, "cases": [case.to_json() for case in cases]})
    if failed:
        names = ", ".join(f"{case.architecture}/{case.fault or 'clean'}" for case in failed)
        raise UnclassifiedError(
            f"the self-check failed: {len(failed)} of {len(cases)} cases were not caught or not located ({names})",
            next_step="read the table above: the checker, not the candidate, needs fixing",
        )
