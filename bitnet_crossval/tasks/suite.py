"""invoke crossval-suite and crossval-merge: many cases from one cases file, sharded across CI jobs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_crossval.errors import Interrupted, SuiteError, error_class_for
from bitnet_crossval.repair.guard import REPAIR_PARENT_ENV
from bitnet_crossval.repair.options import REPAIR
from bitnet_crossval.suite.options import (
    LIST,
    MERGE_OPTIONS,
    SUITE_OPTIONS,
    SUITE_OUTPUTS,
    build_suite_request,
    shard_reports,
)
from bitnet_crossval.util import ui
from bitnet_crossval.util.options import FORMAT, VERBOSE, OptionValues

from ._runner import print_json, suite_context, suite_task

if TYPE_CHECKING:
    from bitnet_crossval.suite.result import SuiteResult


@suite_task(options=(*SUITE_OPTIONS, REPAIR, FORMAT, *SUITE_OUTPUTS, VERBOSE))
def crossval_suite(values: OptionValues) -> None:
    """Run every case of a cases file (TOML), each its own crossval-per-token; --jobs, --shard, cached results."""
    from bitnet_crossval.repair.preflight import preflight_for
    from bitnet_crossval.suite.runner import backends_of, case_listing, run_suite

    request = build_suite_request(values, verbose=values[VERBOSE])
    outputs = _outputs(values)
    if values[LIST]:
        listing = case_listing(request)
        for case in listing:
            shard = f" (shard {case['shard']})" if case["shard"] is not None else ""
            mark = "" if case["selected"] else "  [another shard]"
            ui.say(f"{case['index']:>4}  {case['id']}{shard}{mark}")
        if values[FORMAT] == "json":
            print_json({"command": "crossval-suite", "ok": True, "cases": listing})
        return
    ctx = suite_context()
    unusable: dict[str, SuiteError] = {}
    for backend in sorted({name for case in request.selected() for name in backends_of(case)}):
        try:
            preflight_for(ctx, backend, values[REPAIR])
        except Interrupted:
            raise
        except SuiteError as exc:
            # Only the cases that need this backend fail; the others run.
            ui.warn(f"the cases that need {backend} cannot run: {exc.message}")
            unusable[backend] = exc
    # A case is a command of its own: not the re-executed child of this one's repair.
    child_env = {name: value for name, value in ctx.env.items() if name != REPAIR_PARENT_ENV}
    result = run_suite(request, ctx, unusable=unusable, child_env=child_env)
    shard = f", shard {request.shard.label}" if request.shard else ""
    _finish(values, result, outputs, title=f"{result.name} ({Path(result.cases_file).name}{shard})")


@suite_task(options=(*MERGE_OPTIONS, FORMAT, *SUITE_OUTPUTS, VERBOSE))
def crossval_merge(values: OptionValues) -> None:
    """Merge the JSON reports of a suite's shards into the report (and JUnit file) of one unsharded run."""
    from bitnet_crossval.suite.result import merge_results, read_report

    outputs = _outputs(values)
    parts = []
    for path in shard_reports(values):
        part = read_report(path)
        if part is None:
            ui.say(f"skipping {path}: not a crossval-suite report")
            continue
        parts.append((str(path), part))
    result = merge_results(parts)
    _finish(values, result, outputs, title=f"{result.name} ({len(parts)} shards merged)")


def _outputs(values: OptionValues) -> dict[str, Path]:
    from bitnet_crossval.crossval.report import check_output_path

    paths: dict[str, Path] = {}
    for option in SUITE_OUTPUTS:
        path = values[option]
        if path is not None:
            check_output_path(path, what=f"the {option.flag} file")
            paths[option.name] = path
    return paths


def _finish(values: OptionValues, result: SuiteResult, outputs: dict[str, Path], *, title: str) -> None:
    """The summary, the files, the JSON document, and the exit code the cases add up to."""
    from bitnet_crossval.suite.junit import write_junit
    from bitnet_crossval.suite.table import print_summary
    from bitnet_crossval.util.files import dump_json, write_atomic

    print_summary(result, title=title)
    document = result.to_json()
    if "report" in outputs:
        write_atomic(outputs["report"], dump_json(document), what="the report")
    if "junit" in outputs:
        write_junit(result, outputs["junit"])
    if values[FORMAT] == "json":
        print_json(document)
    if not result.passed:
        raise error_class_for(result.exit_code)(f"the suite failed: {result.sentence()}", next_step=result.next_step())
