"""invoke's entry point; the suite itself is the package ``tasks/``.

invoke imports this file under the name ``tasks`` (its loader prefers ``tasks.py`` to
``tasks/__init__.py``), while ``import tasks`` anywhere else finds the package. To keep a
single ``tasks`` module object, this file hands the name over to the package before
anything else imports it, and only re-exports the root collection.
"""

from __future__ import annotations

import importlib
import sys

del sys.modules[__name__]
ns = importlib.import_module("tasks.commands").ns
