"""Fixtures of the suite's unit tests: the fake reference shim and its cache, shared with the
crossval unit tests (tests/unit/crossval/conftest.py)."""

from __future__ import annotations

from tests.unit.crossval.conftest import fake_cache, fake_shim, model_factory, tiny_vocab

__all__ = ["fake_cache", "fake_shim", "model_factory", "tiny_vocab"]
