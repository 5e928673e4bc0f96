"""``python fake_crossval.py <task> ...``: the suite's real commands on the fake reference shim.

The preflight is replaced by one that trusts the constants file (a real one looks for a llama.cpp
install, and there is none in the unit tests), and a suite run this way runs each case through
this program too, instead of ``python -m bitnet_crossval``. Everything else -- the console
script, the tasks, the crossval, the suite, their reports -- is the commands' own.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from bitnet_crossval.repair import preflight
    from bitnet_crossval.suite import options as suite_options

    preflight.preflight_for = lambda ctx, backend, repair: None  # type: ignore[assignment,return-value]
    build = suite_options.build_suite_request

    def through_this_program(values, *, verbose):
        request = build(values, verbose=verbose)
        return dataclasses.replace(request, program=(sys.executable, str(Path(__file__).resolve())))

    suite_options.build_suite_request = through_this_program  # must precede importing the tasks

    from bitnet_crossval.console import main

    main(sys.argv[1:])
