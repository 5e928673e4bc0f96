"""Values made fit for a strict JSON document, in one place.

JSON has no NaN or infinity, and ``json`` does not know numpy's scalars, paths or tuples: every
document the suite writes (stdout, ``--report``, the constants file's readers) goes through
:func:`jsonable`, so a non-finite metric is ``null`` and never ``NaN`` a strict parser refuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """``value`` with NaN/infinity as None, numpy scalars and arrays as Python values, paths as
    text, tuples and sets as lists, mapping keys as text; anything else unknown as its text."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, PurePath):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars and 0-d arrays, without importing numpy
    tolist = getattr(value, "tolist", None)
    ndim = getattr(value, "ndim", None)
    if callable(tolist) and ndim:
        return jsonable(tolist())
    if callable(item):
        return jsonable(item())
    return str(value)
