"""Fixtures of the integration tests in more than one directory."""

from __future__ import annotations

import pytest

from tests.bitnet2024 import bitnet, bitnet_install, bitnet_models  # noqa: F401 (session fixtures)
from tests.integration.hardening_support import FinishedCache, build_finished_cache
from tests.shared_builds import shared_build, shared_result

shared_build(
    "finished_cache",
    title="a finished cache of the fake llama.cpp (install, build tree, shim, constants file)",
    bound=600,
)(build_finished_cache)


@pytest.fixture(scope="session")
def finished_cache(request: pytest.FixtureRequest) -> FinishedCache:
    """The pristine finished cache of the hardening tests (tests/integration/hardening_support.py);
    a test that damages it takes ``finished``, which restores it first."""
    return shared_result(request, "finished_cache", FinishedCache)
