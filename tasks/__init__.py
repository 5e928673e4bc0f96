"""The bitnet task suite: provisioning of C++ reference backends and per-token cross-validation.

This package is the library; ``tasks/commands`` holds the invoke tasks that call it, and the
``tasks.py`` file beside this package is only invoke's entry point. Importing this package
imports nothing heavy.
"""

from __future__ import annotations

__version__ = "0.1.0"
