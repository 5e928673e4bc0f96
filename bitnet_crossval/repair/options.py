"""The options of ``preflight`` and ``rebuild`` that the repair reads, each declared once.

A module of its own, importing nothing heavy: every ``invoke`` run, even ``invoke --list``,
reads the option tables, and :mod:`bitnet_crossval.repair.preflight` brings the detection, the
cache and the constants file with it.
"""

from __future__ import annotations

from typing import Literal, get_args

from bitnet_crossval.util.options import Flag, OptionalChoice

RepairMode = Literal["auto", "never", "always"]
REPAIR_MODES: tuple[RepairMode, ...] = get_args(RepairMode)

REPAIR: OptionalChoice[RepairMode] = OptionalChoice(
    name="repair",
    help="when the backend is missing: auto installs it, never stops, always reinstalls it anyway",
    choices=REPAIR_MODES,
    default_text="never when a CI variable (CI, GITHUB_ACTIONS, ...) is set, else auto",
)

CHECK = Flag(name="check", help="build and write nothing; exit 1 when the constants file is out of date")
