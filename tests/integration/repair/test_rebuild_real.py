"""`invoke rebuild`: detection, the shim built against each backend, the constants file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnet_crossval.store.constants import read_constants
from tests.helpers import copy_fake_llama, run_invoke

pytestmark = pytest.mark.integration


def test_rebuild_against_the_real_llama_builds_the_shim_and_writes_constants_once(
    llama_install: Path, base_env: dict[str, str], cache_dir: Path
) -> None:
    env = {**base_env, "LLAMA_CPP_DIR": str(llama_install)}
    first = run_invoke(["rebuild"], env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    path = cache_dir / "constants.json"
    constants = read_constants(path)
    assert constants.status == "ok"
    llama = constants.record("llama")
    assert llama is not None and llama.available and llama.origin == "LLAMA_CPP_DIR"
    assert llama.shim is not None and Path(llama.shim).exists()
    assert llama.shim_api == "current"
    bitnet = constants.record("bitnet")
    assert bitnet is not None and not bitnet.available and bitnet.reason
    before = path.read_bytes()

    second = run_invoke(["rebuild"], env=env, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "constants file unchanged" in second.stderr
    assert path.read_bytes() == before
    assert run_invoke(["rebuild", "--check"], env=env).returncode == 0

    without = {k: v for k, v in env.items() if k != "LLAMA_CPP_DIR"}
    stale = run_invoke(["rebuild", "--check"], env=without)
    assert stale.returncode == 1 and "out of date" in stale.stderr
    assert path.read_bytes() == before  # --check writes nothing


def test_a_damaged_constants_file_means_detect_again(
    llama_install: Path, base_env: dict[str, str], cache_dir: Path
) -> None:
    env = {**base_env, "LLAMA_CPP_DIR": str(llama_install)}
    path = cache_dir / "constants.json"
    path.write_text('{"schema": "bitnet-suite/constants", "version": 1, "backe')
    check = run_invoke(["preflight", "--backend", "llama", "--json", "--repair", "never"], env=env)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["constants"] == "corrupt"
    assert "invoke rebuild" in check.stderr
    # With repair allowed, the repair is the rebuild alone, proven in a re-executed process.
    repaired = run_invoke(["preflight", "--backend", "llama", "--json"], env=env, timeout=600)
    assert repaired.returncode == 0, repaired.stderr
    assert "repairing the constants file" in repaired.stderr and "[reexec]" in repaired.stderr
    assert "building llama.cpp" not in repaired.stderr
    document = json.loads(repaired.stdout)
    assert document["repaired"] is True and document["constants"] == "ok"
    assert read_constants(path).status == "ok"


def test_a_shim_that_does_not_build_is_exit_5_and_the_backend_is_still_recorded(
    base_env: dict[str, str], cache_dir: Path, tmp_path: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src")
    env = {**base_env, "LLAMA_CPP_SOURCE": str(source)}
    # A libllama with the names detection wants but no real C API: the shim cannot build.
    setup = run_invoke(["setup-cpp-auto", "--backend", "llama"], env={**env, "FAKE_LLAMA_NO_API": "1"})
    assert setup.returncode == 0, setup.stderr
    result = run_invoke(["rebuild"], env=env, timeout=300)
    assert result.returncode == 5, result.stderr
    assert "shim" in result.stderr and "log:" in result.stderr
    record = read_constants(cache_dir / "constants.json").record("llama")
    assert record is not None and record.available and record.shim is None
