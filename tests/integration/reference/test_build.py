"""Building the shim: API-generation detection against the real pinned llama.cpp and a header with neither API."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bitnet_crossval.errors import BuildFailed
from bitnet_crossval.reference.build import ShimBuild, build_shim
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.sources import shim_source_dir
from bitnet_crossval.store.sources import read_cmake_cache
from tests.integration.reference.conftest import BACKEND_COMMIT, BUILD_FLAGS, build_against

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_current_llama_cpp_selects_current_api(current_build: ShimBuild, shim: Shim) -> None:
    assert current_build.api == "current"
    info = shim.info()
    assert info["api"] == "current"
    assert info["api_features"]["flash_attn_control"] == "flash_attn_type"
    assert info["api_features"]["memory_clear"] == "llama_memory_clear"
    assert info["backend"] == "llama"
    assert info["backend_commit"] == BACKEND_COMMIT
    assert info["build_flags"] == BUILD_FLAGS  # quotes and ';' survive CMake and C escaping
    assert info["system_info"]


def test_second_build_with_nothing_changed_reconfigures_and_relinks_nothing(
    current_build: ShimBuild, llama_install: Path, work: Path, shim_env: dict[str, str]
) -> None:
    mtime = current_build.executable.stat().st_mtime_ns
    again = build_against(llama_install, work, shim_env, name="current", backend="llama")
    assert again == current_build
    assert again.executable.stat().st_mtime_ns == mtime
    commands = [line for line in current_build.log_path.read_text().splitlines() if line.startswith("+ ")]
    assert sum(" -S " in c for c in commands) == 1, "the unchanged configure step ran twice"
    assert sum("--build" in c for c in commands) == 2


def test_header_with_neither_api_fails_the_build(work: Path, shim_env: dict[str, str]) -> None:
    prefix = work / "no-api-prefix"
    (prefix / "include").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "include" / "llama.h").write_text("#pragma once\nint llama_nothing(void);\n")
    (prefix / "lib" / "libllama.so").write_bytes(b"")
    (prefix / "lib" / "libggml.so").write_bytes(b"")
    with pytest.raises(BuildFailed) as caught:
        build_against(prefix, work, shim_env, name="no-api", backend="llama")
    assert caught.value.exit_code == 5
    assert caught.value.log_path is not None
    log = " ".join(caught.value.log_path.read_text().split())  # CMake wraps its messages
    assert "declares neither the current llama.cpp C API" in log


def test_a_build_tree_configured_from_another_clone_is_built_again(
    llama_install: Path, tmp_path: Path, shim_env: dict[str, str]
) -> None:
    # Two clones of the suite (or a release whose C++ sources moved) share one cache: the
    # build tree of the first names its source directory, which CMake refuses for the second.
    build_dir = tmp_path / "shared-build"
    built = []
    for clone in ("clone-a", "clone-b"):
        sources = tmp_path / clone / "cpp"
        shutil.copytree(shim_source_dir(), sources)
        built.append(
            build_shim(
                include_dirs=[llama_install / "include"],
                lib_dir=llama_install / "lib",
                build_dir=build_dir,
                log_path=tmp_path / f"{clone}.log",
                env=shim_env,
                backend="llama",
                backend_commit=BACKEND_COMMIT,
                build_flags=BUILD_FLAGS,
                source_dir=sources,
            )
        )
    assert read_cmake_cache(build_dir)["CMAKE_HOME_DIRECTORY"] == str(tmp_path / "clone-b" / "cpp")
    assert Shim(built[1].executable, env=shim_env).info()["api"] == "current"
