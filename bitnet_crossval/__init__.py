"""Provisioning of C++ reference backends (llama.cpp, bitnet.cpp) and per-token cross-validation.

Sub-packages by job: ``util`` (subprocesses, terminal output, files, retries, environment
numbers), ``store`` (everything under the cache root), ``backends`` (what a backend is and
whether it is usable), ``provision`` (source, build, install), ``repair`` (preflight, rebuild,
re-exec), ``reference`` (the C++ shim) and ``crossval``. ``tasks`` is the invoke command layer
on top. Importing this package imports nothing heavy.
"""

from __future__ import annotations

__version__ = "0.1.0"
