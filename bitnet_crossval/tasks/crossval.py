"""invoke crossval-per-token: does a candidate engine compute what llama.cpp / bitnet.cpp computes?"""

from __future__ import annotations

from bitnet_crossval.crossval.options import OUTPUT_OPTIONS, PLOT, REQUEST_OPTIONS, build_request, output_paths
from bitnet_crossval.errors import BadInput, CandidateFailed, ParityFailed
from bitnet_crossval.repair.preflight import REPAIR
from bitnet_crossval.util.options import FORMAT, VERBOSE, OptionValues

from ._runner import print_json, suite_context, suite_task


@suite_task(
    options=(*REQUEST_OPTIONS, REPAIR, FORMAT, *OUTPUT_OPTIONS, VERBOSE),
    json_error=lambda raw: {"verdict": "error"},
)
def crossval_per_token(values: OptionValues) -> None:
    """Compare a candidate's logits with the C++ reference's at every position (repairs the backend first)."""
    from bitnet_crossval.crossval import report as out
    from bitnet_crossval.crossval.run import run_crossval
    from bitnet_crossval.repair.preflight import preflight_for

    request = build_request(values)
    outputs = output_paths(values)
    if PLOT in outputs:
        out.check_plot_available()
    ctx = suite_context()
    preflight_for(ctx, request.backend, values[REPAIR])
    result = run_crossval(request, ctx)
    out.print_table(result)
    out.write_outputs(result, {option.name: path for option, path in outputs.items()})
    if result.non_finite is not None:
        # No verdict on numbers that are not real: the model's (bad input) or the candidate's. The
        # JSON document is the report with the error every failing task's document carries.
        kind = BadInput if result.non_finite.side == "reference" else CandidateFailed
        error = kind(result.failure_sentence(), next_step=result.next_step())
        if values[FORMAT] == "json":
            print_json({**result.to_json(), "command": "crossval-per-token", "ok": False, "error": error.to_json()})
        raise error
    if values[FORMAT] == "json":
        print_json(result.to_json())
    if not result.passed:
        raise ParityFailed(result.failure_sentence(), next_step=result.next_step())
