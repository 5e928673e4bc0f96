"""setup-cpp-auto: get a backend's source, build it, install it into the cache.

The sequence follows what pre-commit and cargo do for their caches:

1. Nothing-to-do check without the lock: an install whose marker names the requested source
   *and which is usable* (detection: libraries found, loaded, symbols present) is left alone.
   A damaged install (a library deleted or overwritten) is rebuilt, never reported as done.
2. The per-backend lock; then the same check again, because another process may have
   finished the work while we waited.
3. Fetch the source (network errors are retried), configure and build in the cache.
4. Install into a fresh staging directory, health-check it (libraries load, symbols exist),
   write the install marker last, then move the staging directory into place.

A setup killed at any point leaves either the previous install or none: never a directory
with a marker and half its files. A local source directory is built incrementally in a
build directory of its own, so re-running after an edit recompiles only what changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bitnet_crossval.backends.detect import Detection, Detector, probe
from bitnet_crossval.backends.specs import BackendSpec
from bitnet_crossval.errors import BuildFailed
from bitnet_crossval.provision import cmake, sources
from bitnet_crossval.provision.recipes import RECIPES, Recipe
from bitnet_crossval.store import lock
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.marker import InstallMarker, write_marker
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import make_dir, os_error, remove_tree
from bitnet_crossval.util.proc import process_alive
from bitnet_crossval.util.retry import RetryPolicy

Action = Literal["installed", "up-to-date", "rebuilt"]


@dataclass(frozen=True, kw_only=True)
class SetupResult:
    backend: str
    action: Action
    install_dir: Path
    lib_dir: Path
    source: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    log_path: Path | None = None
    detection: Detection | None = None
    """The detection of the finished install, when this run proved it usable."""

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "action": self.action,
            "install_dir": str(self.install_dir),
            "lib_dir": str(self.lib_dir),
            "source": dict(self.source),
            "seconds": round(self.seconds, 3),
            "log": None if self.log_path is None else str(self.log_path),
        }


def setup_backend(
    spec: BackendSpec,
    *,
    cache: CacheLayout,
    env: Mapping[str, str],
    source_text: str | None = None,
    ref: str | None = None,
    force: bool = False,
    jobs: int | None = None,
    detector: Detector | None = None,
) -> SetupResult:
    """Make ``spec``'s backend installed and usable in ``cache``; return what was done.

    ``detector`` carries this process's detections, so an install checked a moment ago is
    not load-checked again, and the new install's health check is remembered for later.
    """
    started = time.monotonic()
    recipe = RECIPES[spec.name]
    detector = detector or Detector(env=env, cache=cache)
    source_text = sources.resolve_source_text(source_text, spec=spec, env=env)
    source = sources.parse_source(source_text or spec.default_source, spec=spec, ref=ref)
    policy = RetryPolicy.from_env(env)
    timeout = lock.lock_timeout_from(env)
    cmake_args = recipe.cmake_args(env)  # the toolchain check comes before any lock or download
    wanted = sources.identify_source(source, spec=spec, env=env, cache=cache)
    cache.ensure()

    def finished_install() -> tuple[InstallMarker, Detection] | None:
        # A local directory is always rebuilt incrementally; its build decides "nothing to do".
        if force or wanted is None or wanted.get("kind") == "local":
            return None
        return _usable_install_of(spec, detector.detect_cache_install(spec), wanted)

    if (done := finished_install()) is not None:
        _remove_dead_leftovers(cache, spec.name)
        return _already_installed(spec, cache, done, started)

    with lock.exclusive_lock(cache.lock_path(spec.name), purpose=f"set up {spec.display}", timeout=timeout):
        if (done := finished_install()) is not None:  # another process may have done it meanwhile
            ui.say(f"another process finished installing {spec.display} while we waited")
            return _already_installed(spec, cache, done, started)
        for leftover in cache.install_leftovers(spec.name):  # safe: we hold the lock
            ui.debug(f"removing the leftover {leftover} of an interrupted setup")
            remove_tree(leftover)
        fetched = sources.fetch_default_or(source_text, spec=spec, ref=ref, cache=cache, env=env, policy=policy)
        return _build_and_install(
            spec,
            recipe,
            fetched,
            cmake_args=cmake_args,
            cache=cache,
            env=env,
            force=force,
            jobs=jobs,
            started=started,
            detector=detector,
        )


def same_source(installed: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """The pinned git commit and the PyPI copy of that commit are the same source."""
    if installed.get("dirty") == "true" or wanted.get("dirty") == "true":
        return False
    if wanted.get("commit") and installed.get("commit"):
        return installed.get("commit") == wanted.get("commit")
    return dict(installed) == dict(wanted)


def _usable_install_of(
    spec: BackendSpec, found: Detection, wanted: Mapping[str, str]
) -> tuple[InstallMarker, Detection] | None:
    """The install's marker and detection when it is in the cache, built from ``wanted``, and usable."""
    if found.marker is None or not same_source(found.marker.source, wanted):
        return None
    if not found.available:
        ui.say(f"the {spec.display} install at {found.root} is damaged ({found.reason}); rebuilding it", "warn")
        return None
    return found.marker, found


def _up_to_date(
    spec: BackendSpec,
    install_dir: Path,
    source: Mapping[str, str],
    started: float,
    *,
    why: str,
    detection: Detection | None,
    log_path: Path | None = None,
) -> SetupResult:
    ui.say(f"{spec.display} {why}; nothing to do", "ok")
    return SetupResult(
        backend=spec.name,
        action="up-to-date",
        install_dir=install_dir,
        lib_dir=install_dir / "lib",
        source=source,
        seconds=time.monotonic() - started,
        log_path=log_path,
        detection=detection,
    )


def _already_installed(
    spec: BackendSpec, cache: CacheLayout, done: tuple[InstallMarker, Detection], started: float
) -> SetupResult:
    marker, detection = done
    install_dir = cache.install_dir(spec.name)
    why = f"is already installed at {install_dir} ({marker.label()})"
    return _up_to_date(spec, install_dir, marker.source, started, why=why, detection=detection)


def _remove_dead_leftovers(cache: CacheLayout, backend: str) -> None:
    """Leftovers of setups whose process is gone (a kill between the two renames leaves the
    previous install behind): safe to remove without the lock, since nobody uses them."""
    for leftover in cache.install_leftovers(backend):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            ui.debug(f"removing the leftover {leftover} of a setup that was killed")
            remove_tree(leftover)


def _build_and_install(
    spec: BackendSpec,
    recipe: Recipe,
    fetched: sources.FetchedSource,
    *,
    cmake_args: tuple[str, ...],
    cache: CacheLayout,
    env: Mapping[str, str],
    force: bool,
    jobs: int | None,
    started: float,
    detector: Detector,
) -> SetupResult:
    install_dir = cache.install_dir(spec.name)
    log_path = cache.log_file("setup", spec.name)
    build_dir = cache.backend_build(spec.name, fetched.identity)
    if force:
        remove_tree(build_dir)
    project = cmake.CMakeProject(
        source_dir=fetched.path,
        build_dir=build_dir,
        cmake_args=cmake_args,
        targets=recipe.targets,
        jobs=jobs,
        env=env,
    )
    ui.say(f"building {spec.display} from {fetched.path} (log: {log_path})")
    if recipe.prepare is not None:
        recipe.prepare(fetched.path, env, log_path)
    compiled = cmake.configure_and_build(project, log_path=log_path, what=spec.display)

    if not compiled and not force:
        current = detector.detect_cache_install(spec)
        if current.available and current.marker is not None and same_source(current.marker.source, fetched.identity):
            return _up_to_date(
                spec,
                install_dir,
                fetched.identity,
                started,
                why=f"at {install_dir} is up to date with {fetched.path}",
                detection=current,
                log_path=log_path,
            )

    staging = cache.staging_dir(spec.name, os.getpid())
    remove_tree(staging)
    make_dir(staging)
    recipe.stage(project, staging, log_path)
    health = probe(spec, staging, origin="cache", require_marker=False)
    if not health.available:
        remove_tree(staging)
        raise BuildFailed(
            f"the {spec.display} build finished but failed its health check: {health.reason}",
            log_path=log_path,
            next_step="check that the source is a real llama.cpp / bitnet.cpp tree and rerun with --force",
        )
    marker = write_marker(
        staging,
        backend=spec.name,
        source=fetched.identity,
        build_flags=cmake.flags_summary(cmake_args),
        build_dir=build_dir,
    )
    existed = install_dir.exists()
    _move_into_place(staging, install_dir, retired=cache.retired_dir(spec.name, os.getpid()))
    installed = replace(health.relocated(install_dir), marker=marker)
    detector.remember(spec, installed)
    action: Action = "rebuilt" if existed else "installed"
    seconds = time.monotonic() - started
    ui.say(f"{spec.display} {action} at {install_dir} in {seconds:.1f}s", "ok")
    return SetupResult(
        backend=spec.name,
        action=action,
        install_dir=install_dir,
        lib_dir=install_dir / "lib",
        source=fetched.identity,
        seconds=seconds,
        log_path=log_path,
        detection=installed,
    )


def _move_into_place(staging: Path, install_dir: Path, *, retired: Path) -> None:
    try:
        if install_dir.exists():
            install_dir.rename(retired)
        staging.rename(install_dir)
    except OSError as exc:
        raise os_error(exc, install_dir) from exc
    remove_tree(retired)
