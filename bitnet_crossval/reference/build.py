"""Building the C++ reference shim (``cpp/``) against one backend install.

:func:`build_shim` configures and compiles ``cpp/`` against a backend given as plain
directories and reports which llama.cpp C API generation CMake detected; the result is checked
by running the new executable's ``info``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bitnet_crossval.errors import BadInput, BuildFailed, SuiteError
from bitnet_crossval.provision import cmake
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.sources import shim_source_digest, shim_source_dir
from bitnet_crossval.store.sources import read_cmake_cache
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import file_sha256, make_dir, read_json_file, remove_tree, write_json_atomic

ApiGeneration = Literal["current", "legacy"]

EXECUTABLE_NAME = "bitnet-shim.exe" if sys.platform == "win32" else "bitnet-shim"
CONFIGURE_STAMP = "bitnet-shim-configure.json"


@dataclass(frozen=True, kw_only=True)
class ShimBuild:
    """A compiled shim and what it was compiled against."""

    executable: Path
    api: ApiGeneration
    backend: str
    backend_commit: str
    build_dir: Path
    log_path: Path
    sha256: str
    """Of the executable, recorded so a later run can tell it is still the file built here."""
    source_digest: str
    """Of the C++ sources it was built from (:func:`shim_source_digest`)."""


def build_shim(
    *,
    include_dirs: Sequence[Path],
    lib_dir: Path,
    build_dir: Path,
    log_path: Path,
    env: Mapping[str, str],
    backend: str,
    backend_commit: str,
    build_flags: str,
    source_dir: Path | None = None,
) -> ShimBuild:
    """Configure and build ``cpp/`` against one backend; incremental in ``build_dir``.

    The configure step is skipped when its inputs are unchanged since the last successful
    one (CMake itself re-runs it when ``CMakeLists.txt`` or the backend's ``llama.h``
    changes), so a repeated call costs one no-op ``cmake --build``. The result is proven by
    running the executable's ``info``; an executable damaged after it was built (truncated,
    overwritten) is deleted and linked again once, since the build tool sees nothing to do.
    """
    source = source_dir or shim_source_dir()
    _check_backend_layout(include_dirs, lib_dir)
    make_dir(log_path.parent)
    definitions = {
        "CMAKE_BUILD_TYPE": "Release",
        "SHIM_INCLUDE_DIRS": ";".join(str(Path(d).absolute()) for d in include_dirs),
        "SHIM_LIB_DIR": str(Path(lib_dir).absolute()),
        "SHIM_BACKEND": backend,
        "SHIM_BACKEND_COMMIT": backend_commit,
        "SHIM_BUILD_FLAGS": build_flags,
    }
    project = cmake.CMakeProject(
        source_dir=source,
        build_dir=build_dir,
        cmake_args=[f"-D{key}={value}" for key, value in definitions.items()],
        env=env,
    )
    what = f"the shim for {backend} ({lib_dir})"
    cmake.prepare_build_dir(project)
    stamp = {"source": str(source), "definitions": definitions}
    stamp_path = build_dir / CONFIGURE_STAMP
    cache_path = build_dir / "CMakeCache.txt"
    try:
        if not (cache_path.exists() and read_json_file(stamp_path) == stamp):
            ui.debug(f"configuring the shim for {backend} in {build_dir}")
            remove_tree(stamp_path)
            cmake.configure(project, log_path=log_path, what=what)
            write_json_atomic(stamp_path, stamp)
        compiled = cmake.build(project, log_path=log_path, what=what, show_progress=False)
        api = _api_from_cache(cache_path, log_path)
        executable = _find_executable(build_dir, log_path)
        problem = _run_problem(executable, env=env, api=api)
        if problem is not None and not compiled:
            ui.debug(f"{executable} does not run ({problem}); linking it again")
            remove_tree(executable)
            cmake.build(project, log_path=log_path, what=what, show_progress=False)
            problem = _run_problem(executable, env=env, api=api)
    except BuildFailed as exc:
        raise BuildFailed(exc.message, log_path=exc.log_path, next_step=_SHIM_NEXT_STEP) from exc
    if problem is not None:
        raise BuildFailed(
            f"the shim was built but does not run: {problem}",
            log_path=log_path,
            next_step=f"check that {lib_dir} holds the libraries the headers belong to",
        )
    return ShimBuild(
        executable=executable,
        api=api,
        backend=backend,
        backend_commit=backend_commit,
        build_dir=build_dir,
        log_path=log_path,
        sha256=file_sha256(executable),
        source_digest=shim_source_digest(source),
    )


_SHIM_NEXT_STEP = (
    "read the log: a missing llama.h/libllama or an unrecognised llama.cpp C API is reported there; "
    "check the backend install or rerun `invoke setup-cpp-auto`"
)


def _run_problem(executable: Path, *, env: Mapping[str, str], api: ApiGeneration) -> str | None:
    """Why the built executable is not a working shim for ``api``, or None."""
    try:
        reported = Shim(executable, env=env).info()
    except SuiteError as exc:  # a shim that cannot start (not executable) is told here too
        return exc.message
    if reported.get("api") != api:
        return f"it reports API {reported.get('api')!r} but CMake selected {api!r}"
    return None


def _check_backend_layout(include_dirs: Sequence[Path], lib_dir: Path) -> None:
    if not include_dirs:
        raise BuildFailed(
            "no include directories were given for the shim build",
            next_step="pass the backend's <prefix>/include (and ggml's include dir if separate)",
        )
    for path in [*include_dirs, lib_dir]:
        if ";" in str(path) or "\n" in str(path):
            # CMake splits list values on ';' and offers no escape that survives every layer.
            raise BadInput(
                f"the backend path {str(path)!r} contains ';' or a line break, which CMake cannot take in a list",
                next_step="move the backend install (or the directory LLAMA_CPP_DIR / BITNET_CPP_DIR names) "
                "to a path without them",
            )
    if not any((Path(d) / "llama.h").is_file() for d in include_dirs):
        raise BuildFailed(
            f"llama.h was not found in {', '.join(str(d) for d in include_dirs)}",
            next_step="point LLAMA_CPP_DIR / BITNET_CPP_DIR at an install with include/llama.h, "
            "or run `invoke setup-cpp-auto`",
        )
    if not Path(lib_dir).is_dir():
        raise BuildFailed(
            f"the library directory {lib_dir} does not exist",
            next_step="point LLAMA_CPP_DIR / BITNET_CPP_DIR at an install with lib/libllama, "
            "or run `invoke setup-cpp-auto`",
        )


def _api_from_cache(cache_path: Path, log_path: Path) -> ApiGeneration:
    api = read_cmake_cache(cache_path.parent).get("BITNET_SHIM_API")
    if api == "current":
        return "current"
    if api == "legacy":
        return "legacy"
    raise BuildFailed(
        f"the shim's CMake cache records no API generation ({cache_path})",
        log_path=log_path,
        next_step=f"delete {cache_path.parent} and rerun the build",
    )


def _find_executable(build_dir: Path, log_path: Path) -> Path:
    # Multi-config generators (Visual Studio, Xcode) put it under the configuration name.
    for candidate in (build_dir / EXECUTABLE_NAME, build_dir / "Release" / EXECUTABLE_NAME):
        if candidate.is_file():
            return candidate
    raise BuildFailed(
        f"the build finished but {EXECUTABLE_NAME} is not in {build_dir}",
        log_path=log_path,
        next_step=f"delete {build_dir} and rerun the build",
    )
