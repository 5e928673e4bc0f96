"""invoke preflight: is the C++ reference backend usable? With --repair, make it so."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from bitnet_crossval.backends.specs import BACKEND
from bitnet_crossval.repair.guard import is_repair_child
from bitnet_crossval.repair.options import REPAIR
from bitnet_crossval.util import ui
from bitnet_crossval.util.options import FORMAT, VERBOSE, Flag, OptionValues, RawValue

from ._runner import print_json, suite_context, suite_task

JSON = Flag(name="json", help="the same as --format json")


def _error_fields(raw: Mapping[str, RawValue]) -> dict[str, Any]:
    return {"backend": raw.get(BACKEND.name) or BACKEND.default, "available": False}


@suite_task(options=(BACKEND, REPAIR, FORMAT, JSON, VERBOSE), json_error=_error_fields)
def preflight(values: OptionValues) -> None:
    """Check that a C++ reference backend is usable; repair it when allowed."""
    answer = None
    if values[REPAIR] != "always" and not values[VERBOSE] and not is_repair_child(os.environ):
        from bitnet_crossval.repair.answer import remembered_answer

        answer = remembered_answer(os.environ, values[BACKEND])
    if answer is not None:
        summary, document = answer["summary"], answer["report"]
    else:
        from bitnet_crossval.repair.preflight import preflight_for

        report = preflight_for(suite_context(), values[BACKEND], values[REPAIR])
        summary, document = report.summary(), report.to_json()
    ui.say(summary, "ok")
    if values[FORMAT] == "json" or values[JSON]:
        print_json(document)
