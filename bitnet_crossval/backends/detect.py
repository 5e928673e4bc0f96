"""Is a backend usable? Proof, not presence.

A backend counts as available when its libraries are found, they load in a fresh process
(so every dependency resolves), they export the C symbols that identify the backend, and,
for an install in the cache, the install marker exists (it is written last, so a directory
left by a killed setup never counts). A directory named by ``LLAMA_CPP_DIR`` /
``BITNET_CPP_DIR`` is honoured first and may be an install prefix or a build tree.

The load check runs in a separate interpreter: llama.cpp and bitnet.cpp both ship a
``libllama.so`` and ``libggml.so`` with the same sonames, and once one is loaded the dynamic
loader would hand it to the other. It costs a process start, so a :class:`Detector` runs it at
most once per process for an unchanged install and hands the result to whoever asks next, and
a check that passed is remembered in the cache (``checks/load-<backend>.json``) with the
fingerprint of what it loaded: every library's path, inode, size and times, the symbols asked
for and ``LD_LIBRARY_PATH``. A later process whose libraries have the same fingerprint takes
that answer instead of starting an interpreter; a library rebuilt, replaced or touched changes
the fingerprint and is checked again. A failed check is never remembered.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bitnet_crossval.backends.platform import shared_library_suffixes
from bitnet_crossval.backends.specs import SPECS, BackendSpec
from bitnet_crossval.errors import SuiteError
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.marker import MARKER_NAME, InstallMarker, read_marker
from bitnet_crossval.util import ui

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
    marker: InstallMarker | None = None

    def relocated(self, new_root: Path) -> Detection:
        """The same detection for a tree moved from ``root`` to ``new_root`` (a staging
        directory renamed into place): the files are the same, only their paths change."""
        old_root = self.root
        assert old_root is not None

        def moved(path: Path) -> Path:
            return new_root / path.relative_to(old_root) if path.is_relative_to(old_root) else path

        return replace(
            self,
            root=new_root,
            lib_dir=moved(self.lib_dir) if self.lib_dir else None,
            include_dirs=tuple(moved(p) for p in self.include_dirs),
            libraries={name: moved(path) for name, path in self.libraries.items()},
        )


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
        return detect_at(spec, Path(override).expanduser(), origin=spec.dir_env, python=python)
    return detect_at(spec, cache.install_dir(spec.name), origin="cache", python=python)


def detect_at(
    spec: BackendSpec,
    root: Path,
    *,
    origin: str,
    python: str | None = None,
    record: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Detection:
    """Check the install or build tree at ``root``; ``origin`` is "cache" (the marker is then
    required) or the environment variable that named ``root``. ``record`` and ``env``: see
    :func:`check_loadable`."""
    if not root.is_dir():
        reason = (
            f"{spec.display} is not installed in the cache ({root})"
            if origin == "cache"
            else f"{origin}={root} is not a directory"
        )
        return Detection(backend=spec.name, available=False, origin=origin, root=root, reason=reason)
    return probe(spec, root, origin=origin, require_marker=origin == "cache", python=python, record=record, env=env)


def probe(
    spec: BackendSpec,
    root: Path,
    *,
    origin: str,
    require_marker: bool,
    python: str | None = None,
    record: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Detection:
    """Check one directory: marker, libraries, includes, a real load and the symbols."""

    def missing(reason: str, **found: Any) -> Detection:
        return Detection(backend=spec.name, available=False, origin=origin, root=root, reason=reason, **found)

    marker = read_marker(root)
    if require_marker and (marker is None or marker.backend != spec.name):
        return missing(f"{root} has no complete install (the install marker is missing)")
    libraries = find_libraries(spec, root)
    absent = [name for name in _REQUIRED_LIBS if name not in libraries]
    if absent:
        names = ", ".join(f"lib{n}" for n in absent)
        return missing(f"no {names} under {root}")
    include_dirs = find_include_dirs(root)
    if not include_dirs:
        return missing(f"no llama.h under {root}", libraries=libraries)
    problem = check_loadable(spec, libraries, python=python, record=record, env=env)
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


def paths_checked(spec: BackendSpec, found: Detection) -> list[Path]:
    """Every file and directory :func:`probe` looks at to reach ``found`` (a passing detection):
    a change to any of them could change the answer. Every candidate is listed, not only the
    directories searched: a dangling link earlier in the search whose target appears changes no
    directory, but its own ``stat`` goes from missing to present."""
    assert found.root is not None
    root = found.root
    return [
        root,
        root / MARKER_NAME,
        *(root / sub for sub in _LIB_SUBDIRS),
        *(
            root / sub / f"lib{name}{suffix}"
            for name in spec.libraries
            for sub in _LIB_SUBDIRS
            for suffix in shared_library_suffixes()
        ),
        *(root / sub for sub in _INCLUDE_SUBDIRS),
        *(root / sub / header for sub in _INCLUDE_SUBDIRS for header in ("llama.h", "ggml.h")),
    ]


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


# Run with `python -I -S`: no site, no user paths, so the probe starts in milliseconds. It
# imports nothing but ctypes (json alone would double its cost): the arguments are JSON lists of
# strings made by check_loadable, which are also Python literals, and the verdict is written by hand.
_PROBE = r"""
import ctypes, sys
libs, groups = (eval(a, {"__builtins__": {}}) for a in sys.argv[1:3])
def text(s):
    return '"' + "".join(c if c not in '"\\' and " " <= c <= "~" else "\\u%04x" % ord(c) for c in s) + '"'
loaded = []
try:
    for path in libs:
        loaded.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
except OSError as exc:
    print('{"error": ' + text(str(exc)) + '}')
    sys.exit(0)
missing = [" or ".join(g) for g in groups if not any(hasattr(lib, sym) for sym in g for lib in loaded)]
print('{"missing": [' + ", ".join(text(m) for m in missing) + ']}')
"""


def load_fingerprint(spec: BackendSpec, libraries: Mapping[str, Path], env: Mapping[str, str]) -> str:
    """What a load check's answer depends on, as a digest: the libraries as files on disk (path,
    inode, size, modification and change times), the symbols asked for, the loader's path."""
    files: list[object] = []
    for name in spec.libraries:
        if name in libraries:
            path = libraries[name]
            try:
                st = path.stat()
                files.append([str(path), str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
            except OSError:
                files.append([str(path), None])
    document = {
        "libraries": files,
        "symbols": [list(group) for group in spec.required_symbols],
        "ld_library_path": env.get("LD_LIBRARY_PATH", ""),
        "platform": sys.platform,
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode("utf-8")).hexdigest()


def check_loadable(
    spec: BackendSpec,
    libraries: Mapping[str, Path],
    *,
    python: str | None = None,
    record: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Load the libraries in a fresh interpreter; return the problem, or "" when they are usable.

    With ``record`` a passed check is written there with the libraries' fingerprint, and a
    record whose fingerprint is still theirs is the answer, without a new interpreter.
    """
    fingerprint = load_fingerprint(spec, libraries, os.environ if env is None else env) if record else ""
    if record is not None and _recorded_pass(record, fingerprint):
        return ""
    problem = _load_in_fresh_interpreter(spec, libraries, python=python)
    if record is not None and not problem:
        _record_pass(record, fingerprint)
    return problem


def _recorded_pass(record: Path, fingerprint: str) -> bool:
    from bitnet_crossval.util.files import read_json_file

    data = read_json_file(record)
    return isinstance(data, dict) and data.get("fingerprint") == fingerprint and data.get("loadable") is True


def _record_pass(record: Path, fingerprint: str) -> None:
    from bitnet_crossval.util.files import dump_json, make_dir, write_atomic

    try:
        make_dir(record.parent)
        write_atomic(record, dump_json({"fingerprint": fingerprint, "loadable": True}), what="the load check record")
    except SuiteError:
        return  # a cache that cannot remember costs the next run a check, nothing else


def _load_in_fresh_interpreter(spec: BackendSpec, libraries: Mapping[str, Path], *, python: str | None) -> str:
    ordered = [str(libraries[n]) for n in spec.libraries if n in libraries]
    groups = [list(group) for group in spec.required_symbols]
    # Tests count these lines to prove a process checks each install once.
    ui.debug(f"load check of {spec.display}: {Path(ordered[-1]).parent} (pid {os.getpid()})")
    from bitnet_crossval.util import proc  # the subprocess machinery: only when a check runs

    try:
        result = proc.run(
            [python or probe_interpreter(), "-I", "-S", "-c", _PROBE, json.dumps(ordered), json.dumps(groups)]
        )
    except SuiteError as exc:
        return f"the library load check could not run: {exc.message}"
    verdict = _probe_verdict(result.output)
    if verdict is None:
        return "the library load check could not run: it printed no verdict"
    if "error" in verdict:
        return f"the libraries do not load: {verdict['error']}"
    if verdict["missing"]:
        return (
            f"the libraries load but do not export {', '.join(verdict['missing'])}, "
            f"so this is not a usable {spec.display} build"
        )
    return ""


def _probe_verdict(output: str) -> dict[str, Any] | None:
    """The probe's JSON line; a library may print its own lines before or after it (stdout and
    stderr arrive merged), so the last line that is a verdict counts."""
    for line in reversed(output.splitlines()):
        try:
            verdict = json.loads(line)
        except ValueError:
            continue
        if isinstance(verdict, dict) and (
            isinstance(verdict.get("error"), str) or isinstance(verdict.get("missing"), list)
        ):
            return verdict
    return None


def _fingerprint(spec: BackendSpec, root: Path) -> tuple[object, ...]:
    """What an install looks like on disk, cheaply (a few ``stat`` calls): a replaced install,
    a rewritten marker or a library deleted, truncated or overwritten changes it."""

    def stat_of(path: Path) -> tuple[object, ...]:
        try:
            st = path.stat()
        except OSError:
            return (str(path), None)
        return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)

    libraries = find_libraries(spec, root) if root.is_dir() else {}
    return (
        stat_of(root),
        stat_of(root / MARKER_NAME),
        *(stat_of(path) for _name, path in sorted(libraries.items())),
    )


class Detector:
    """Detection for one process: each backend is load-checked once while its install is
    unchanged, and a result known from elsewhere (an install's health check) is taken as is."""

    def __init__(self, *, env: Mapping[str, str], cache: CacheLayout, python: str | None = None) -> None:
        self._env = env
        self._cache = cache
        self._python = python
        self._known: dict[tuple[str, str], tuple[tuple[object, ...], Detection]] = {}

    def detect(self, spec: BackendSpec) -> Detection:
        """``spec``'s backend where the suite uses it: its environment variable's directory, else the cache."""
        override = self._env.get(spec.dir_env)
        if override:
            return self._detect_at(spec, Path(override).expanduser(), origin=spec.dir_env)
        return self.detect_cache_install(spec)

    def detect_cache_install(self, spec: BackendSpec) -> Detection:
        """The install in the cache, whatever the environment points at (setup installs there)."""
        return self._detect_at(spec, self._cache.install_dir(spec.name), origin="cache")

    def detect_all(self) -> list[tuple[BackendSpec, Detection]]:
        return [(spec, self.detect(spec)) for spec in SPECS.values()]

    def remember(self, spec: BackendSpec, found: Detection) -> None:
        """Take ``found`` as the detection of the tree at ``found.root`` as it is on disk now."""
        assert found.root is not None
        self._known[(spec.name, str(found.root))] = (_fingerprint(spec, found.root), found)

    def _detect_at(self, spec: BackendSpec, root: Path, *, origin: str) -> Detection:
        fingerprint = _fingerprint(spec, root)
        known = self._known.get((spec.name, str(root)))
        if known is not None and known[0] == fingerprint:
            return known[1]
        found = detect_at(
            spec, root, origin=origin, python=self._python, record=self._cache.load_check(spec.name), env=self._env
        )
        self._known[(spec.name, str(root))] = (fingerprint, found)
        return found
