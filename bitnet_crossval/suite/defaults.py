"""The suite's defaults, in a module that imports nothing heavy.

``crossval-suite``'s option table (:mod:`bitnet_crossval.suite.options`) is read by every
``invoke`` run, even ``invoke --list``; it takes its defaults from here so that listing the
commands does not import NumPy and the runner.
"""

from __future__ import annotations

DEFAULT_CASE_TIMEOUT = 3600.0
