"""Numbers read from environment variables, validated where they are read.

A value that is set but is not a finite number in range is bad input (exit 6) with the
variable named, never a crash later while a lock is held; an unset or empty variable means
the default.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from bitnet_crossval.errors import BadInput


def env_float(
    env: Mapping[str, str],
    name: str,
    *,
    default: float,
    minimum: float = 0.0,
    exclusive_minimum: bool = False,
    example: str,
) -> float:
    """``env[name]`` as a finite float >= ``minimum`` (> with ``exclusive_minimum``)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    too_small = value <= minimum if exclusive_minimum else value < minimum
    if not math.isfinite(value) or too_small:
        bound = f"greater than {minimum:g}" if exclusive_minimum else f"at least {minimum:g}"
        raise BadInput(
            f"{name}={raw!r} is not a number of seconds {bound}",
            next_step=f"set {name} to a number such as {example}, or unset it",
        )
    return value


def env_int(env: Mapping[str, str], name: str, *, default: int, minimum: int, example: str, unit: str) -> int:
    """``env[name]`` as a whole number >= ``minimum``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise BadInput(
            f"{name}={raw!r} is not a whole number of {unit} of at least {minimum}",
            next_step=f"set {name} to a number such as {example}, or unset it",
        )
    return value
