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


# --- the real pinned llama.cpp, built once per test session --------------------------------
# Shared builds (tests/shared_builds.py): done before the first test that needs them, outside any
# per-test time limit. BITNET_TEST_LLAMA_INSTALL and BITNET_TEST_LLAMA_SOURCE name a llama.cpp
# built already (docs/howto/tests.md); with both set, nothing here builds llama.cpp.

import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bitnet_crossval.reference.build import build_shim  # noqa: E402
from bitnet_crossval.reference.client import Shim  # noqa: E402

# The plugin that runs the shared builds; imported here first, so pytest must know it before then.
pytest.register_assert_rewrite("tests.shared_builds")
pytest_plugins = ["tests.shared_builds", "pytester"]

from tests.shared_builds import SharedBuildFailed, Workshop, shared_build, shared_result  # noqa: E402

LLAMA_INSTALL_ENV = "BITNET_TEST_LLAMA_INSTALL"
LLAMA_SOURCE_ENV = "BITNET_TEST_LLAMA_SOURCE"


def llama_hint() -> str:
    """The header's word on the escape hatches: how to use them, or which are in use."""
    used = [f"{name}={os.environ[name]}" for name in (LLAMA_INSTALL_ENV, LLAMA_SOURCE_ENV) if os.environ.get(name)]
    if len(used) == 2:
        return f"llama.cpp as built already: {' and '.join(used)} (docs/howto/tests.md)"
    return (
        f"to use a llama.cpp built already, set {LLAMA_INSTALL_ENV}=<its install prefix> and"
        f" {LLAMA_SOURCE_ENV}=<its source tree>" + (f" (now only {used[0]})" if used else "") + " (docs/howto/tests.md)"
    )


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


@shared_build(
    "real_llama",
    title="the real pinned llama.cpp from an empty cache: invoke preflight --backend llama --repair auto",
    bound=2400,  # about 4 minutes on two idle cores, 15 on one core that a busy loop shares
    hint=llama_hint,
)
def build_real_llama(shop: Workshop) -> RealLlamaRun:
    """From an empty cache: `invoke preflight --backend llama --repair auto`, with no network
    but the package registries (so the git source fails and the PyPI sdist is used)."""
    cache_dir = shop.mktemp("real-llama") / "cache"
    env = child_env(cache_dir)
    env["CI"] = "true"  # as in CI: repair only because the command line asks for it
    started = time.monotonic()
    first = shop.run_invoke(["preflight", "--backend", "llama", "--repair", "auto"], env=env)
    if first.returncode != 0:
        raise SharedBuildFailed(f"`invoke preflight --backend llama --repair auto` exited with code {first.returncode}")
    return RealLlamaRun(cache_dir=cache_dir, env=env, first=first, seconds=time.monotonic() - started)


@pytest.fixture(scope="session")
def real_llama(request: pytest.FixtureRequest) -> RealLlamaRun:
    return shared_result(request, "real_llama", RealLlamaRun)


@shared_build(
    "llama_install",
    title="the install prefix (include/, lib/) of the real pinned llama.cpp",
    bound=60,
    needs=lambda: () if os.environ.get(LLAMA_INSTALL_ENV) else ("real_llama",),
    hint=llama_hint,
)
def find_llama_install(shop: Workshop) -> Path:
    override = os.environ.get(LLAMA_INSTALL_ENV)
    found = Path(override) if override else shop.result("real_llama", RealLlamaRun).install
    if not (found / "include" / "llama.h").is_file():
        raise SharedBuildFailed(f"{found} holds no include/llama.h" + (f" ({LLAMA_INSTALL_ENV})" if override else ""))
    shop.say(f"{found}" + (f" (from {LLAMA_INSTALL_ENV})" if override else ""))
    return found


@pytest.fixture(scope="session")
def llama_install(request: pytest.FixtureRequest) -> Path:
    """An install prefix (include/, lib/) of the real pinned llama.cpp."""
    return shared_result(request, "llama_install", Path)


@shared_build(
    "llama_source",
    title="the source tree of the real pinned llama.cpp (vocabularies in models/, gguf-py)",
    bound=60,
    needs=lambda: () if os.environ.get(LLAMA_SOURCE_ENV) else ("real_llama",),
    hint=llama_hint,
)
def find_llama_source(shop: Workshop) -> Path:
    override = os.environ.get(LLAMA_SOURCE_ENV)
    if override:
        found = Path(override)
    else:
        cache_dir = shop.result("real_llama", RealLlamaRun).cache_dir
        candidates = sorted(cache_dir.glob("sources/*/**/include/llama.h"))
        if not candidates:
            raise SharedBuildFailed("the real llama.cpp setup left no source tree in the cache")
        found = min(candidates, key=lambda p: len(p.parts)).parent.parent
    if not (found / "models").is_dir():
        raise SharedBuildFailed(f"{found} holds no models/" + (f" ({LLAMA_SOURCE_ENV})" if override else ""))
    shop.say(f"{found}" + (f" (from {LLAMA_SOURCE_ENV})" if override else ""))
    return found


@pytest.fixture(scope="session")
def llama_source(request: pytest.FixtureRequest) -> Path:
    """The source tree of the real pinned llama.cpp (vocabularies in models/, gguf-py)."""
    return shared_result(request, "llama_source", Path)


@shared_build("llama_shim", title="the C++ shim against the real pinned llama.cpp", bound=900, needs=("llama_install",))
def build_llama_shim(shop: Workshop) -> Shim:
    install = shop.result("llama_install", Path)
    work = shop.mktemp("llama-shim")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}
    env["NO_COLOR"] = "1"
    with shop.follow(work / "build.log"):
        built = build_shim(
            include_dirs=[install / "include"],
            lib_dir=install / "lib",
            build_dir=work / "build",
            log_path=work / "build.log",
            env=env,
            backend="llama",
            backend_commit="0c1e57098bba43ac29e6e3b677cdceebdd22334f",
            build_flags="",
        )
    return Shim(built.executable, env=env, log_dir=work / "logs")


@pytest.fixture(scope="session")
def llama_shim(request: pytest.FixtureRequest) -> Shim:
    """The C++ shim built once per session against the real pinned llama.cpp."""
    return shared_result(request, "llama_shim", Shim)
