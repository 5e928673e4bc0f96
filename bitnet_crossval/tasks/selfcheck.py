"""invoke crossval-selfcheck: prove the cross-validation catches and locates deliberate bugs."""

from __future__ import annotations

from bitnet_crossval.backends.specs import BACKEND
from bitnet_crossval.crossval.options import ARCH, SELFCHECK_CANDIDATE, SELFCHECK_MODEL, SELFCHECK_WEIGHTS
from bitnet_crossval.errors import SelfcheckFailed
from bitnet_crossval.repair.options import REPAIR
from bitnet_crossval.util.options import FORMAT, VERBOSE, OptionValues

from ._runner import print_json, suite_context, suite_task


@suite_task(options=(BACKEND, REPAIR, ARCH, SELFCHECK_WEIGHTS, SELFCHECK_MODEL, SELFCHECK_CANDIDATE, FORMAT, VERBOSE))
def crossval_selfcheck(values: OptionValues) -> None:
    """Run the crossval against deliberately broken candidates; each must be caught and located."""
    from bitnet_crossval.crossval.models import parse_model
    from bitnet_crossval.crossval.selfcheck import CANDIDATES, parse_architectures, print_selfcheck, run_selfcheck
    from bitnet_crossval.repair.preflight import preflight_for

    architectures = parse_architectures(values[ARCH])
    model = parse_model(values[SELFCHECK_MODEL]) if values[SELFCHECK_MODEL] else None
    only = values[SELFCHECK_CANDIDATE]
    if only == "hf":
        from bitnet_crossval.crossval.hf import require_hf

        require_hf()
    ctx = suite_context()
    preflight_for(ctx, values[BACKEND], values[REPAIR])
    cases = run_selfcheck(
        ctx,
        backend=values[BACKEND],
        architectures=architectures,
        candidates=CANDIDATES if only is None else (only,),
        weights=values[SELFCHECK_WEIGHTS],
        model=model,
    )
    print_selfcheck(cases)
    failed = [case for case in cases if not case.ok]
    if values[FORMAT] == "json":
        print_json({"command": "crossval-selfcheck", "ok": not failed, "cases": [case.to_json() for case in cases]})
    if failed:
        names = ", ".join(
            f"{case.architecture}/{case.fault or 'clean'}" + ("" if case.candidate == "numpy" else f"/{case.candidate}")
            for case in failed
        )
        raise SelfcheckFailed(
            f"the self-check failed: {len(failed)} of {len(cases)} cases were not caught or not located ({names})"
        )
