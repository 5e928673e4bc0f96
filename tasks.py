"""invoke's entry point when the suite runs from this repository: ``invoke --list``.

The task collections live in ``tasks/``; the wheel ships them as ``bitnet_crossval.tasks``
(see ``[tool.setuptools.package-dir]`` in pyproject.toml), which is also what the
``bitnet-crossval`` console script runs. Importing them under that one name means every
process has one module object per task module, whichever way it was started.
"""

from __future__ import annotations

from bitnet_crossval.tasks import ns

__all__ = ["ns"]
