"""The recursion guard of the repair flow, on its own so every command can read it cheaply."""

from __future__ import annotations

from collections.abc import Mapping

REPAIR_PARENT_ENV = "BITNET_REPAIR_PARENT"


def is_repair_child(env: Mapping[str, str]) -> bool:
    """True in a process started by a re-exec: it must validate only, never repair."""
    return env.get(REPAIR_PARENT_ENV) == "1"
