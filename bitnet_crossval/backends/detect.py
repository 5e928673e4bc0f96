"""Is a backend usable? Proof, not presence.

A backend counts as available when its libraries are found, they load in a fresh process
(so every dependency resolves), they export the C symbols that identify the backend, and,
for an install in the cache, the install marker exists (it is written last, so a directory
left by a killed setup never counts). A directory named by ``LLAMA_CPP_DIR`` /
``BITNET_CPP_DIR`` is honoured first and may be an install prefix or a build tree.

The load check runs in a separate interpreter: llama.cpp and bitnet.cpp both ship a
``libllama.so`` and ``libggml.so`` with the same sonames, and once one is loaded the dynamic
loader would hand it to the other.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet_crossval.backends.specs import BackendSpec, shared_library_suffixes
from bitnet_crossval.errors import SuiteError
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util import proc

INSTALL_MARKER = ".bitnet-suite-install.json"

# Where a library may sit below a backend root: an install prefix, a llama.cpp build tree,
# or a bitnet.cpp build tree (its llama.cpp is a subproject under 3rdparty/).
_LIB_SUBDIRS = (
    "lib",
    "lib64",
    "bin",
    "build",
    "build/bin",
    "build/lib",
    "build/src",
    "build/ggml/src",
    "src",
    "ggml/src",
    "build/3rdparty/llama.cpp/src",
    "build/3rdparty/llama.cpp/ggml/src",
    "build/3rdparty/llama.cpp/bin",
)
_INCLUDE_SUBDIRS = (
    "include",
    "ggml/include",
    "3rdparty/llama.cpp/include",
    "3rdparty/llama.cpp/ggml/include",
)
# libllama and libggml are required; ggml-base and ggml-cpu exist only in newer trees.
_REQUIRED_LIBS = ("llama", "ggml")


@dataclass(frozen=True, kw_only=True)
class Detection:
    backend: str
    available: bool
    reason: str = ""
    origin: str = ""
    root: Path | None = None
    lib_dir: Path | None = None
    include_dirs: tuple[Path, ...] = ()
    libraries: Mapping[str, Path] = field(default_factory=dict)
    marker: Mapping[str, Any] | None = None


def probe_interpreter() -> str:
    """A Python to run the load check: ours, unless it has vanished (a virtual environment
    deleted while a repair ran); the check needs only the standard library."""
    for candidate in (sys.executable, getattr(sys, "_base_executable", "")):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("python3") or shutil.which("python") or sys.executable


def detect(
    spec: BackendSpec,
    *,
    env: Mapping[str, str],
    cache: CacheLayout,
    python: str | None = None,
) -> Detection:
    """Find ``spec``'s backend: the directory in its environment variable first, then the cache."""
    override = env.get(spec.dir_env)
    if override:
        root = Path(override).expanduser()
        if not root.is_dir():
            return Detection(
                backend=spec.name,
                available=False,
                origin=spec.dir_env,
                root=root,
                reason=f"{spec.dir_env}={override} is not a directory",
            )
        return probe(spec, root, origin=spec.dir_env, require_marker=False, python=python)
    root = cache.install_dir(spec.name)
    if not root.is_dir():
        return Detection(
            backend=spec.name,
            available=False,
            origin="cache",
            root=root,
            reason=f"{spec.display} is not installed in the cache ({root})",
        )
    return probe(spec, root, origin="cache", require_marker=True, python=python)


def read_marker(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / INSTALL_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("backend") else None


def probe(
    spec: BackendSpec,
    root: Path,
    *,
    origin: str,
    require_marker: bool,
    python: str | None = None,
) -> Detection:
    """Check one directory: marker, libraries, includes, a real load and the symbols."""

    def missing(reason: str, **found: Any) -> Detection:
        return Detection(backend=spec.name, available=False, origin=origin, root=root, reason=reason, **found)

    marker = read_marker(root)
    if require_marker and (marker is None or marker.get("backend") != spec.name):
        return missing(f"{root} has no complete install (the install marker is missing)")
    libraries = find_libraries(spec, root)
    absent = [name for name in _REQUIRED_LIBS if name not in libraries]
    if absent:
        names = ", ".join(f"lib{n}" for n in absent)
        return missing(f"no {names} under {root}")
    include_dirs = find_include_dirs(root)
    if not include_dirs:
        return missing(f"no llama.h under {root}", libraries=libraries)
    problem = check_loadable(spec, libraries, python=python)
    if problem:
        return missing(problem, libraries=libraries, include_dirs=include_dirs, marker=marker)
    return Detection(
        backend=spec.name,
        available=True,
        origin=origin,
        root=root,
        lib_dir=libraries["llama"].parent,
        include_dirs=include_dirs,
        libraries=libraries,
        marker=marker,
    )


def find_libraries(spec: BackendSpec, root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in spec.libraries:
        for sub in _LIB_SUBDIRS:
            for suffix in shared_library_suffixes():
                candidate = root / sub / f"lib{name}{suffix}"
                if candidate.exists():
                    found[name] = candidate
                    break
            if name in found:
                break
    return found


def find_include_dirs(root: Path) -> tuple[Path, ...]:
    """The directory holding llama.h, then the one holding ggml.h when it differs."""
    llama_h = next((root / s for s in _INCLUDE_SUBDIRS if (root / s / "llama.h").exists()), None)
    if llama_h is None:
        return ()
    ggml_h = next((root / s for s in _INCLUDE_SUBDIRS if (root / s / "ggml.h").exists()), None)
    dirs = [llama_h]
    if ggml_h is not None and ggml_h != llama_h:
        dirs.append(ggml_h)
    return tuple(dirs)


# Run with `python -I -S`: no site, no user paths, so the probe starts in milliseconds.
_PROBE = r"""
import ctypes, json, sys
libs, groups = json.loads(sys.argv[1]), json.loads(sys.argv[2])
loaded = []
try:
    for path in libs:
        loaded.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
except OSError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
missing = []
for group in groups:
    if not any(hasattr(lib, sym) for sym in group for lib in loaded):
        missing.append(" or ".join(group))
print(json.dumps({"missing": missing}))
"""


def check_loadable(spec: BackendSpec, libraries: Mapping[str, Path], *, python: str | None = None) -> str:
    """Load the libraries in a fresh interpreter; return the problem, or "" when they are usable."""
    ordered = [str(libraries[n]) for n in spec.libraries if n in libraries]
    groups = [list(group) for group in spec.required_symbols]
    try:
        result = proc.run(
            [python or probe_interpreter(), "-I", "-S", "-c", _PROBE, json.dumps(ordered), json.dumps(groups)]
        )
        verdict = json.loads(result.output.strip().splitlines()[-1])
    except (SuiteError, ValueError, IndexError) as exc:
        return f"the library load check could not run: {exc}"
    if "error" in verdict:
        return f"the libraries do not load: {verdict['error']}"
    if verdict["missing"]:
        return (
            f"the libraries load but do not export {', '.join(verdict['missing'])}, "
            f"so this is not a usable {spec.display} build"
        )
    return ""
