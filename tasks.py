"""invoke's entry point in a checkout: ``invoke --list`` runs the suite's task collection.

The tasks live in the library (:mod:`bitnet_crossval.tasks`); invoke puts this file's
directory on ``sys.path`` before loading it, so the import works in a checkout that was never
installed, and every process has one module object per task module.
"""

from __future__ import annotations

from bitnet_crossval.tasks import ns

__all__ = ["ns"]
