"""invoke crossval-per-token: does a candidate engine compute what llama.cpp / bitnet.cpp computes?"""

from __future__ import annotations

from bitnet_crossval.crossval.options import OUTPUT_OPTIONS, PLOT, REQUEST_OPTIONS, build_request, output_paths
from bitnet_crossval.errors import BadInput, CandidateFailed, ParityFailed, SuiteError
from bitnet_crossval.repair.options import REPAIR
from bitnet_crossval.util.options import FORMAT, VERBOSE, OptionValues

from ._runner import print_json, suite_context, suite_task


@suite_task(
    options=(*REQUEST_OPTIONS, REPAIR, FORMAT, *OUTPUT_OPTIONS, VERBOSE),
    json_error=lambda raw: {"verdict": "error"},
)
def crossval_per_token(values: OptionValues) -> None:
    """Compare a candidate's logits with the C++ reference's at every position (repairs the backend first)."""
    from bitnet_crossval.crossval import report as out
    from bitnet_crossval.crossval.outputs import check_outputs_apart, protected_paths
    from bitnet_crossval.crossval.run import run_crossval
    from bitnet_crossval.repair.preflight import preflight_for

    request = build_request(values)
    outputs = output_paths(values)
    if PLOT in outputs:
        out.check_plot_available()
    ctx = suite_context()
    check_outputs_apart({option.flag: path for option, path in outputs.items()}, protected_paths(request, ctx))
    preflight_for(ctx, request.backend, values[REPAIR])
    result = run_crossval(request, ctx)
    out.print_table(result)
    failed_output: SuiteError | None = None
    try:
        out.write_outputs(result, {option.name: path for option, path in outputs.items()})
    except SuiteError as exc:
        failed_output = exc
    unreal: SuiteError | None = None
    if result.non_finite is not None:
        # No verdict on numbers that are not real: the model's (bad input) or the candidate's.
        kind = BadInput if result.non_finite.side == "reference" else CandidateFailed
        unreal = kind(result.failure_sentence(), next_step=result.next_step())
    # An output that could not be written comes first: the command did not do all it was asked.
    error = failed_output or unreal
    if values[FORMAT] == "json":
        document = result.to_json()
        if error is not None:
            # The document is the report, with the error every failing command's document carries.
            document.update(command="crossval-per-token", ok=False, error=error.to_json())
        print_json(document)
    if error is not None:
        raise error
    if not result.passed:
        raise ParityFailed(result.failure_sentence(), next_step=result.next_step())
