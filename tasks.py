"""invoke's entry point when the suite runs from this repository: ``invoke --list``.

The task collections live in ``tasks/``; the wheel ships them as ``bitnet_crossval.tasks``
(see ``[tool.setuptools]`` in pyproject.toml), which is also what the ``bitnet-crossval``
console script runs. They are imported under that one name, so every process has one module
object per task module, whichever way it was started. In a checkout that was never installed
(no ``pip install -e .``), nothing maps ``tasks/`` to that name, so it is loaded from here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

try:
    from bitnet_crossval.tasks import ns
except ModuleNotFoundError as missing:
    if missing.name != "bitnet_crossval.tasks":
        raise
    _init = Path(__file__).resolve().parent / "tasks" / "__init__.py"
    _spec = importlib.util.spec_from_file_location("bitnet_crossval.tasks", _init)
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
    ns = _module.ns

__all__ = ["ns"]
