"""The repair flow against damage, with real processes on the fake llama.cpp: a damaged install,
concurrent shim builds, a deeply nested constants file, a dead shim, a moved cache, a shim that
does not build. Each failure is one sentence and a next step; each repair ends in a shim that
runs. See docs/reference/bad-inputs.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bitnet_crossval.store.constants import read_constants
from bitnet_crossval.store.marker import MARKER_NAME as INSTALL_MARKER
from tests.helpers import DATA, HANG_SECONDS, copy_fake_llama, run_invoke, wait_for
from tests.integration.hardening_support import (
    FinishedCache,
    assert_one_sentence,
    fresh_finished_cache,
    install_snapshot,
    shim_runs,
    start_invoke,
    wait_for_text,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def finished(finished_cache: FinishedCache) -> Iterator[FinishedCache]:
    yield from fresh_finished_cache(finished_cache)


PREFLIGHT = ["preflight", "--backend", "llama"]


def _library(install: Path) -> Path:
    return next((install / "lib").glob("libllama.so.*.*.*"))


DAMAGE: dict[str, Callable[[Path], object]] = {
    "library-deleted": lambda install: _library(install).unlink(),
    "symlink-deleted": lambda install: (install / "lib" / "libllama.so").unlink(),
    "garbage": lambda install: _library(install).write_bytes(os.urandom(4096)),
    "empty": lambda install: _library(install).write_bytes(b""),
}


# --------------------------------------------------------------------------- 1. a damaged install


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_install_is_named_then_repaired_by_repair_auto(
    damage: Callable[[Path], object], finished: FinishedCache
) -> None:
    damage(finished.install)
    constants_before = finished.constants.read_bytes()

    refused = run_invoke([*PREFLIGHT, "--repair", "never"], env=finished.env)
    assert_one_sentence(refused, 1, says=["llama.cpp is not available"], next_says=["--repair auto"])
    assert finished.constants.read_bytes() == constants_before

    repaired = run_invoke([*PREFLIGHT, "--repair", "auto"], env=finished.env)
    assert repaired.returncode == 0, repaired.stderr
    assert "llama.cpp rebuilt at" in repaired.stderr
    assert "(auto-repaired)" in repaired.stderr
    assert "error:" not in repaired.stderr

    again = run_invoke([*PREFLIGHT, "--repair", "never"], env=finished.env)  # no circle
    assert again.returncode == 0, again.stderr
    assert "repairing" not in again.stderr
    install_snapshot(finished.install)
    shim_runs(finished.constants, finished.env)


# --------------------------------------------------------------------------- 2. concurrent shim builds


def test_concurrent_shim_builds_take_turns_and_all_succeed(finished: FinishedCache, tmp_path: Path) -> None:
    """Three `invoke preflight` and four `invoke rebuild` at once, on garbage constants and no
    shim build tree: every run must build (or find) the shim. A holder takes the rebuild lock
    first, so each run is proven to wait for it; released, all seven race for it."""
    finished.constants.write_text("{garbage")
    for tree in (finished.cache / "builds").glob("shim-*"):
        shutil.rmtree(tree)
    logs_before = set((finished.cache / "logs").iterdir())
    lock = finished.cache / "locks" / "rebuild.lock"
    ready, release = tmp_path / "holder.ready", tmp_path / "holder.release"
    holder = subprocess.Popen([sys.executable, str(DATA / "lock_holder.py"), str(lock), str(ready), str(release)])
    wait_for(ready, proc=holder)
    commands = [PREFLIGHT] * 3 + [["rebuild"]] * 4
    errs = [tmp_path / f"stderr-{i}.txt" for i in range(len(commands))]
    procs = [start_invoke(args, env=finished.env, stderr_path=err) for args, err in zip(commands, errs, strict=True)]
    try:
        for proc, err in zip(procs, errs, strict=True):
            wait_for_text(err, f"waiting for the lock {lock}: held by pid {holder.pid}", proc)
        release.touch()
        for proc in procs:
            proc.wait(timeout=HANG_SECONDS)
    finally:
        release.touch()
        holder.wait(timeout=HANG_SECONDS)
        for proc in procs:
            proc.kill()
    texts = [err.read_text() for err in errs]
    assert [proc.returncode for proc in procs] == [0] * len(commands), texts
    assert all("error:" not in text and "Traceback" not in text for text in texts), texts
    assert all("(auto-repaired)" in text for text in texts[:3]), texts
    assert read_constants(finished.constants).status == "ok", finished.constants.read_text()
    shim_runs(finished.constants, finished.env)
    # Each run wrote the log of its shim build under a name of its own (its pid).
    shim_logs = sorted(p.name for p in set((finished.cache / "logs").iterdir()) - logs_before)
    assert len(shim_logs) == len(commands), shim_logs
    assert {name.rsplit("-", 1)[-1].removesuffix(".log") for name in shim_logs} == {str(p.pid) for p in procs}


# --------------------------------------------------------------------------- 5. deeply nested JSON


def test_a_deeply_nested_constants_file_means_detect_again(finished: FinishedCache) -> None:
    finished.constants.write_text("[" * 200_000 + "]" * 200_000)

    checked = run_invoke([*PREFLIGHT, "--repair", "never", "--json"], env=finished.env)
    assert checked.returncode == 0, checked.stderr
    assert "RecursionError" not in checked.stderr and "Traceback" not in checked.stderr
    assert "not valid JSON" in checked.stderr and "invoke rebuild" in checked.stderr
    document = json.loads(checked.stdout)
    assert document["available"] is True and document["constants"] == "corrupt"

    stale = run_invoke(["rebuild", "--check"], env=finished.env)
    assert_one_sentence(stale, 1, says=["out of date"], next_says=["invoke rebuild"])

    repaired = run_invoke([*PREFLIGHT, "--repair", "auto", "--json"], env=finished.env)
    assert repaired.returncode == 0, repaired.stderr
    assert "RecursionError" not in repaired.stderr
    document = json.loads(repaired.stdout)
    assert document["repaired"] is True and document["constants"] == "ok"
    json.loads(finished.constants.read_text())
    shim_runs(finished.constants, finished.env)


# --------------------------------------------------------------------------- 6. a dead shim


def _point_shim_at(constants: Path, shim: str) -> None:
    document = json.loads(constants.read_text())
    document["backends"]["llama"]["shim"] = shim
    constants.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def _truncate_shim(constants: Path) -> None:
    record = read_constants(constants).record("llama")
    assert record is not None and record.shim is not None
    os.truncate(record.shim, 1000)


def _chmod_minus_x_shim(constants: Path) -> None:
    record = read_constants(constants).record("llama")
    assert record is not None and record.shim is not None
    os.chmod(record.shim, 0o644)


DEAD_SHIMS: dict[str, tuple[Callable[[Path], object], str]] = {
    "bin-false": (lambda c: _point_shim_at(c, "/bin/false"), "is not the file that was built"),
    "missing": (lambda c: _point_shim_at(c, "/nonexistent/bitnet-shim"), "does not exist"),
    "truncated": (_truncate_shim, "is not the file that was built"),
    # `chmod -x`: the repair ran the old file to check it and ended in "unexpected PermissionError".
    "not-executable": (_chmod_minus_x_shim, "is not executable"),
}


@pytest.mark.parametrize("fix", [[*PREFLIGHT, "--repair", "auto"], ["rebuild"]], ids=["preflight-auto", "rebuild"])
@pytest.mark.parametrize("dead", DEAD_SHIMS.values(), ids=DEAD_SHIMS.keys())
def test_a_dead_shim_is_noticed_and_repaired(
    dead: tuple[Callable[[Path], object], str], fix: list[str], finished: FinishedCache
) -> None:
    damage, problem = dead
    damage(finished.constants)

    refused = run_invoke([*PREFLIGHT, "--repair", "never"], env=finished.env)
    assert_one_sentence(refused, 1, says=["its shim cannot be used", problem], next_says=["invoke rebuild"])

    stale = run_invoke(["rebuild", "--check"], env=finished.env)
    assert_one_sentence(stale, 1, says=["out of date"], next_says=["invoke rebuild"])

    repaired = run_invoke(fix, env=finished.env)
    assert repaired.returncode == 0, repaired.stderr
    assert "error:" not in repaired.stderr
    assert run_invoke(["rebuild", "--check"], env=finished.env).returncode == 0
    shim = shim_runs(finished.constants, finished.env)
    assert shim.is_relative_to(finished.cache / "builds")


# --------------------------------------------------------------------------- 7. a moved cache


def test_a_moved_cache_without_its_marker_is_repaired(finished_cache: FinishedCache, tmp_path: Path) -> None:
    original = finished_cache
    moved = original.copy_to(tmp_path / "moved-cache")
    (moved / "installs" / "llama" / INSTALL_MARKER).unlink()
    env = {**original.env, "BITNET_CACHE_DIR": str(moved)}

    repaired = run_invoke([*PREFLIGHT, "--repair", "auto"], env=env, timeout=600)
    assert repaired.returncode == 0, repaired.stderr
    assert "directory is different" not in repaired.stderr
    assert "error:" not in repaired.stderr
    assert "(auto-repaired)" in repaired.stderr
    install_snapshot(moved / "installs" / "llama")
    record = read_constants(moved / "constants.json").record("llama")
    assert record is not None and record.lib_dir == str(moved / "installs" / "llama" / "lib")
    shim = shim_runs(moved / "constants.json", env)
    assert shim.is_relative_to(moved)
    assert run_invoke([*PREFLIGHT, "--repair", "never"], env=env).returncode == 0


# --------------------------------------------------------------------------- 12. a shim that does not build


def test_a_repair_whose_shim_does_not_build_is_exit_5_and_never_auto_repaired(
    base_env: dict[str, str], cache_dir: Path, tmp_path: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src")
    env = {**base_env, "LLAMA_CPP_SOURCE": str(source), "FAKE_LLAMA_NO_API": "1"}
    result = run_invoke([*PREFLIGHT, "--repair", "auto"], env=env)
    assert_one_sentence(result, 5, says=["the shim for llama.cpp did not build"], next_says=["read the log"])
    assert "(auto-repaired)" not in result.stderr
    assert "[reexec]" not in result.stderr
    assert "  log: " in result.stderr
    record = read_constants(cache_dir / "constants.json").record("llama")
    assert record is not None and record.available and record.shim is None
    install_snapshot(cache_dir / "installs" / "llama")
