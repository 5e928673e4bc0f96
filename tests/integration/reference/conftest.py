"""Shims built once per session for the reference tests: against the real pinned llama.cpp
(`current` API) and against the stub of the 2024 API (`legacy`), plus the tiny models they run.
The builds are shared builds (tests/shared_builds.py): done before the first test, outside any
per-test time limit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bitnet_crossval.reference.build import ShimBuild, build_shim
from bitnet_crossval.reference.client import Shim
from tests.gguf_models import BOS_ID, TinyLlamaSpec, write_llama_model
from tests.helpers import DATA, HANG_SECONDS
from tests.shared_builds import SharedBuildFailed, Workshop, shared_build, shared_result

LEGACY_API_DIR = DATA / "legacy_llama_api"
BUILD_FLAGS = '-DGGML_NATIVE=OFF;-DLLAMA_CURL=OFF "quoted value"'
BACKEND_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
# Wide enough for K-quants (rows of 256) and still tiny: quantizing it takes a fraction of a second.
WIDE_SPEC = TinyLlamaSpec(n_embd=256, n_head=4, n_head_kv=2, n_ff=512, seed=3)


def build_against(install: Path, work: Path, env: dict[str, str], *, name: str, backend: str) -> ShimBuild:
    """The shim built in ``work`` against ``install`` (again: incrementally)."""
    return build_shim(
        include_dirs=[install / "include"],
        lib_dir=install / "lib",
        build_dir=work / f"build-{name}",
        log_path=work / f"build-{name}.log",
        env=env,
        backend=backend,
        backend_commit=BACKEND_COMMIT,
        build_flags=BUILD_FLAGS,
    )


def shim_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}
    env["NO_COLOR"] = "1"
    return env


@pytest.fixture(scope="session")
def shim_env() -> dict[str, str]:
    return shim_environment()


WORK = "reference-shims"
"""The directory, under the test session's base temporary directory, where the shims are built
(the shared builds below; a test rebuilds one in place) and the tiny models written."""


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / WORK
    path.mkdir(exist_ok=True)
    return path


@shared_build(
    "current_build",
    title="the shim against the real pinned llama.cpp, with build flags to record",
    bound=900,
    needs=("llama_install",),
)
def build_current(shop: Workshop) -> ShimBuild:
    install = shop.result("llama_install", Path)
    work = shop.directory(WORK)
    with shop.follow(work / "build-current.log"):
        return build_against(install, work, shim_environment(), name="current", backend="llama")


@pytest.fixture(scope="session")
def current_build(request: pytest.FixtureRequest) -> ShimBuild:
    return shared_result(request, "current_build", ShimBuild)


@pytest.fixture(scope="session")
def shim(current_build: ShimBuild, work: Path, shim_env: dict[str, str]) -> Shim:
    return Shim(current_build.executable, env=shim_env, log_dir=work / "logs")


@pytest.fixture(scope="session")
def tiny_model(work: Path) -> Path:
    return write_llama_model(work / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def wide_model(work: Path) -> Path:
    return write_llama_model(work / "wide-llama.gguf", spec=WIDE_SPEC)


@pytest.fixture(scope="session")
def spm_vocab(llama_source: Path) -> Path:
    return llama_source / "models" / "ggml-vocab-llama-spm.gguf"


@pytest.fixture(scope="session")
def prompt(shim: Shim, tiny_model: Path) -> tuple[int, ...]:
    tokens = shim.tokenize(tiny_model, "hello world, the cat is in it", add_bos=True, parse_special=False).tokens
    assert tokens[0] == BOS_ID
    assert len(tokens) >= 8
    return tokens


@shared_build("legacy_install", title="the stub of the 2024 C API, built and installed", bound=600)
def build_legacy_install(shop: Workshop) -> Path:
    """The stub installed as <prefix>/include + <prefix>/lib."""
    work = shop.directory(WORK)
    prefix = work / "legacy-prefix"
    build = work / "legacy-stub-build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for argv in (
        ["cmake", "-S", str(LEGACY_API_DIR), "-B", str(build), *generator, f"-DCMAKE_INSTALL_PREFIX={prefix}"],
        ["cmake", "--build", str(build)],
        ["cmake", "--install", str(build)],
    ):
        done = shop.run(argv, env=shim_environment(), merge_output=True)
        if done.returncode != 0:
            raise SharedBuildFailed(f"`{' '.join(argv[:2])}` exited with code {done.returncode}")
    return prefix


@pytest.fixture(scope="session")
def legacy_install(request: pytest.FixtureRequest) -> Path:
    return shared_result(request, "legacy_install", Path)


@shared_build("legacy_build", title="the shim against the stub of the 2024 C API", bound=900, needs=("legacy_install",))
def build_legacy(shop: Workshop) -> ShimBuild:
    install = shop.result("legacy_install", Path)
    work = shop.directory(WORK)
    with shop.follow(work / "build-legacy.log"):
        return build_against(install, work, shim_environment(), name="legacy", backend="bitnet")


@pytest.fixture(scope="session")
def legacy_build(request: pytest.FixtureRequest) -> ShimBuild:
    return shared_result(request, "legacy_build", ShimBuild)


@pytest.fixture(scope="session")
def legacy(legacy_build: ShimBuild, shim_env: dict[str, str]) -> Shim:
    return Shim(legacy_build.executable, env=shim_env)


def run_shim(
    executable: Path, *args: str, env: dict[str, str], timeout: float = HANG_SECONDS
) -> subprocess.CompletedProcess[str]:
    """The shim run directly, for its exit code and stderr line (the client maps both away)."""
    return subprocess.run(
        [str(executable), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
