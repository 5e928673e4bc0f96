"""The real 2024 bitnet.cpp for the tests that need one: `../shared/data/bitnet-cpp-2024.tar.gz`
beside the repository (microsoft/BitNet of 2024-10-18 and its llama.cpp fork), or the archive
``BITNET_TEST_BITNET_ARCHIVE`` names. Installed once per test session by `invoke setup-cpp-auto`
(a shared build, outside every per-test time limit: tests/shared_builds.py), with a shim built
against it; ``BITNET_TEST_BITNET_INSTALL`` names an install to reuse instead. A clone without the
archive, or a machine without clang >= 18, skips those tests with the reason."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from bitnet_crossval.crossval.synthetic import write_synthetic_model
from bitnet_crossval.errors import BuildFailed
from bitnet_crossval.provision.bitnet_build import find_clang
from bitnet_crossval.reference.build import build_shim
from bitnet_crossval.reference.client import Shim
from tests.conftest import child_env
from tests.helpers import REPO_ROOT
from tests.shared_builds import SharedBuildFailed, Workshop, shared_build, shared_result

ARCHIVE = Path(
    os.environ.get("BITNET_TEST_BITNET_ARCHIVE") or REPO_ROOT.parent / "shared" / "data" / "bitnet-cpp-2024.tar.gz"
)
VOCAB_MEMBER = "BitNet-c82b5e6/3rdparty/llama.cpp/models/ggml-vocab-llama-spm.gguf"
INSTALL_ENV = "BITNET_TEST_BITNET_INSTALL"


def have_clang() -> bool:
    try:
        find_clang({"PATH": "/usr/bin:/usr/local/bin"})
    except BuildFailed:
        return False
    return True


SKIPS = [
    pytest.mark.skipif(not ARCHIVE.is_file(), reason=f"needs the 2024 bitnet.cpp source archive at {ARCHIVE}"),
    pytest.mark.skipif(
        not os.environ.get(INSTALL_ENV) and not have_clang(), reason="building bitnet.cpp needs clang >= 18"
    ),
]
"""The marks of every test that needs the real 2024 bitnet.cpp."""


def skip_reason() -> str | None:
    """Why the real 2024 bitnet.cpp cannot be had here (None: it can)."""
    if os.environ.get(INSTALL_ENV):
        return None
    if not ARCHIVE.is_file():
        return f"needs the 2024 bitnet.cpp source archive at {ARCHIVE}"
    if not have_clang():
        return "building bitnet.cpp needs clang >= 18"
    return None


@dataclass(frozen=True)
class BitnetInstall:
    path: Path | None
    """None: not to be had here (``skip``)."""
    skip: str | None = None


def shim_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}


@shared_build(
    "bitnet_install",
    title="the real 2024 bitnet.cpp from its archive: invoke setup-cpp-auto --backend bitnet",
    bound=2400,
)
def build_bitnet_install(shop: Workshop) -> BitnetInstall:
    override = os.environ.get(INSTALL_ENV)
    if override:
        shop.say(f"{override} (from {INSTALL_ENV})")
        return BitnetInstall(Path(override))
    reason = skip_reason()
    if reason is not None:
        shop.say(f"skipped: {reason}")
        return BitnetInstall(None, reason)
    cache = shop.mktemp("bitnet-2024") / "cache"
    env = {**child_env(cache), "BITNET_CPP_SOURCE": str(ARCHIVE)}
    done = shop.run_invoke(["setup-cpp-auto", "--backend", "bitnet"], env=env)
    if done.returncode != 0:
        raise SharedBuildFailed(f"`invoke setup-cpp-auto --backend bitnet` exited with code {done.returncode}")
    return BitnetInstall(cache / "installs" / "bitnet")


@shared_build(
    "bitnet",
    title="the shim against the real 2024 bitnet.cpp",
    bound=900,
    needs=("bitnet_install",),
)
def build_bitnet_shim(shop: Workshop) -> Shim | BitnetInstall:
    found = shop.result("bitnet_install", BitnetInstall)
    if found.path is None:
        return found
    install = found.path
    work = shop.mktemp("bitnet-2024-shim")
    with shop.follow(work / "build.log"):
        built = build_shim(
            include_dirs=[install / "include"],
            lib_dir=install / "lib",
            build_dir=work / "build",
            log_path=work / "build.log",
            env=shim_env(),
            backend="bitnet",
            backend_commit="unknown",  # what `invoke rebuild` compiles in for an archive source
            build_flags="",
        )
    shim = Shim(built.executable, env=shim_env(), log_dir=work / "logs")
    if shim.info()["api"] != "legacy":
        raise SharedBuildFailed("the shim against the 2024 bitnet.cpp did not select the legacy C API")
    return shim


@pytest.fixture(scope="session")
def bitnet_install(request: pytest.FixtureRequest) -> Path:
    found = shared_result(request, "bitnet_install", BitnetInstall)
    if found.path is None:
        pytest.skip(found.skip or "no bitnet.cpp")
    return found.path


@pytest.fixture(scope="session")
def bitnet(request: pytest.FixtureRequest, bitnet_install: Path) -> Shim:
    return shared_result(request, "bitnet", Shim)


@pytest.fixture(scope="session")
def bitnet_models(tmp_path_factory: pytest.TempPathFactory, bitnet: Shim) -> dict[str, Path]:
    """A synthetic ternary `bitnet` model as F32 and TQ2_0 (written here), and as I2_S written by
    bitnet.cpp's own quantiser from the F32 one."""
    directory = tmp_path_factory.mktemp("bitnet-2024-models")
    with tarfile.open(ARCHIVE) as archive:
        member = archive.extractfile(VOCAB_MEMBER)
        assert member is not None
        vocab = directory / "ggml-vocab-llama-spm.gguf"
        vocab.write_bytes(member.read())
    made = {
        t: write_synthetic_model(directory / f"bitnet-{t}.gguf", arch="bitnet", tensor_type=t, vocab=vocab)
        for t in ("F32", "TQ2_0")
    }
    made["I2_S"] = directory / "bitnet-I2_S.gguf"
    # One thread: bitnet.cpp's I2_S quantiser writes one scale per call, so chunks would each get theirs.
    bitnet.quantize(made["F32"], made["I2_S"], "I2_S", threads=1)
    return made
