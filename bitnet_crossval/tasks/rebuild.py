"""invoke rebuild: re-detect backends, build the shim against each, write the constants file."""

from __future__ import annotations

from bitnet_crossval.repair.options import CHECK
from bitnet_crossval.util.options import FORMAT, VERBOSE, OptionValues

from ._runner import print_json, suite_context, suite_task


@suite_task(options=(CHECK, FORMAT, VERBOSE))
def rebuild(values: OptionValues) -> None:
    """Re-detect every backend, build the shim against each one found, write the constants file."""
    from bitnet_crossval.errors import BuildFailed, UnclassifiedError
    from bitnet_crossval.repair.rebuild import constants_are_current
    from bitnet_crossval.repair.rebuild import rebuild as run_rebuild
    from bitnet_crossval.util import ui

    ctx = suite_context()
    if values[CHECK]:
        if not constants_are_current(ctx):
            raise UnclassifiedError(
                f"the constants file {ctx.constants_path} is out of date",
                next_step="run `invoke rebuild`",
            )
        ui.say(f"the constants file {ctx.constants_path} is current", "ok")
        if values[FORMAT] == "json":
            print_json({"command": "rebuild", "ok": True, "constants": str(ctx.constants_path), "current": True})
        return
    result = run_rebuild(ctx)
    if values[FORMAT] == "json":
        print_json({"command": "rebuild", "ok": not result.shim_failures, **result.to_json()})
    if result.shim_failures:
        name, error = next(iter(result.shim_failures.items()))
        if not isinstance(error, BuildFailed):
            raise error  # bad input (a backend path CMake cannot take) keeps its own code
        raise BuildFailed(
            f"the shim for {name} did not build: {error.message}", log_path=error.log_path, next_step=error.next_step
        )
