"""How each backend is configured, built and laid out in an install directory.

Every install in the cache has the same layout, whatever built it: ``include/`` with
``llama.h`` and the ggml headers, ``lib/`` with ``libllama`` and the ``libggml*`` libraries
(RUNPATH ``$ORIGIN``, so the directory can be moved into place after the build).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.backends.specs import BackendName
from bitnet_crossval.provision import bitnet_build, cmake

# Only what the reference needs: the llama library and the ggml libraries it links. No
# tests, examples, tools, server, web UI, unified binary, or network client.
LLAMA_CMAKE_ARGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_COMMON=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
)


@dataclass(frozen=True, kw_only=True)
class Recipe:
    backend: BackendName
    # The -D flags (and compilers) for this environment; may raise when the toolchain is unfit,
    # which setup checks before it takes a lock or touches the network.
    cmake_args: Callable[[Mapping[str, str]], tuple[str, ...]]
    targets: tuple[str, ...]
    # Fill an empty staging directory from a finished build.
    stage: Callable[[cmake.CMakeProject, Path, Path], None]
    # Runs before configure (e.g. bitnet.cpp's generated kernel header); may raise SuiteError.
    prepare: Callable[[Path, Mapping[str, str], Path], None] | None = None


def _stage_with_cmake_install(project: cmake.CMakeProject, staging: Path, log_path: Path) -> None:
    cmake.install(project, prefix=staging, log_path=log_path, what=f"into {staging}")
    # Some distributions' GNUInstallDirs pick lib64; the cache layout is always lib/.
    lib64 = staging / "lib64"
    if lib64.is_dir() and not (staging / "lib").exists():
        shutil.move(str(lib64), staging / "lib")


LLAMA_RECIPE = Recipe(
    backend="llama",
    cmake_args=lambda env: LLAMA_CMAKE_ARGS,
    targets=("llama",),
    stage=_stage_with_cmake_install,
)

# microsoft/BitNet, built the way its setup_env.py builds it, minus the model conversion.
BITNET_RECIPE = Recipe(
    backend="bitnet",
    cmake_args=bitnet_build.cmake_args,
    targets=("llama",),
    stage=bitnet_build.stage_from_build_tree,
    prepare=bitnet_build.prepare_source,
)

RECIPES: dict[BackendName, Recipe] = {"llama": LLAMA_RECIPE, "bitnet": BITNET_RECIPE}
