"""How each backend is configured, built and laid out in an install directory.

Every install in the cache has the same layout, whatever built it: ``include/`` with
``llama.h`` and the ggml headers, ``lib/`` with ``libllama`` and the ``libggml*`` libraries
(RUNPATH ``$ORIGIN``, so the directory can be moved into place after the build).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.backends.platform import machine_arch
from bitnet_crossval.backends.specs import BackendName
from bitnet_crossval.provision import bitnet_build, cmake
from bitnet_crossval.util.files import move

# Only what the reference needs from a llama.cpp-family tree: the llama library and the ggml
# libraries it links, shared, optimised. No tests, examples, tools, server or network client.
REFERENCE_LIBRARY_FLAGS: tuple[str, ...] = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF",
)


LLAMA_CMAKE_ARGS: tuple[str, ...] = (
    *REFERENCE_LIBRARY_FLAGS,
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_COMMON=OFF",
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
        move(lib64, staging / "lib")


LLAMA_RECIPE = Recipe(
    backend="llama",
    cmake_args=lambda env: LLAMA_CMAKE_ARGS,
    targets=("llama",),
    stage=_stage_with_cmake_install,
)


def _bitnet_cmake_args(env: Mapping[str, str]) -> tuple[str, ...]:
    cc, cxx, _major = bitnet_build.find_clang(env)
    arch = machine_arch()
    tl_off = "-DBITNET_ARM_TL1=OFF" if arch == "arm64" else "-DBITNET_X86_TL2=OFF"
    return (
        *REFERENCE_LIBRARY_FLAGS,
        f"-DCMAKE_C_COMPILER={cc}",
        f"-DCMAKE_CXX_COMPILER={cxx}",
        tl_off,
        "-DBITNET_BUILD_TESTS=OFF",
        # The libraries are copied out of the build tree into one lib/ directory.
        "-DCMAKE_BUILD_RPATH=$ORIGIN",
    )


# microsoft/BitNet, built the way its setup_env.py builds it, minus the model conversion.
BITNET_RECIPE = Recipe(
    backend="bitnet",
    cmake_args=_bitnet_cmake_args,
    targets=("llama",),
    stage=bitnet_build.stage_from_build_tree,
    prepare=bitnet_build.prepare_source,
)

RECIPES: dict[BackendName, Recipe] = {"llama": LLAMA_RECIPE, "bitnet": BITNET_RECIPE}
