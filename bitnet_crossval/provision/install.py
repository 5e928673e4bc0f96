"""setup-cpp-auto: get a backend's source, build it, install it into the cache.

The sequence follows what pre-commit and cargo do for their caches:

1. Nothing-to-do check without the lock (an install whose marker names the requested
   source is left alone; this takes milliseconds).
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

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bitnet_crossval.backends import detect
from bitnet_crossval.backends.specs import BackendSpec
from bitnet_crossval.errors import BuildFailed
from bitnet_crossval.provision import cmake, sources
from bitnet_crossval.provision.recipes import RECIPES, Recipe
from bitnet_crossval.store import lock
from bitnet_crossval.store.layout import CacheLayout, os_error
from bitnet_crossval.util import retry, ui
from bitnet_crossval.util.files import remove_tree, write_json_atomic

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


def setup_backend(
    spec: BackendSpec,
    *,
    cache: CacheLayout,
    env: Mapping[str, str],
    source_text: str | None = None,
    ref: str | None = None,
    force: bool = False,
    jobs: int | None = None,
) -> SetupResult:
    started = time.monotonic()
    recipe = RECIPES[spec.name]
    source_text = sources.resolve_source_text(source_text, spec=spec, env=env)
    wanted = _wanted_identity(spec, source_text=source_text, ref=ref, env=env)
    cmake_args = recipe.cmake_args(env)  # the toolchain check comes before any lock or download
    cache.ensure()
    install_dir = cache.install_dir(spec.name)

    def finished_install() -> dict[str, Any] | None:
        # A local directory is always rebuilt incrementally; its build decides "nothing to do".
        if force or wanted is None or wanted.get("kind") == "local":
            return None
        return _installed_with(spec, install_dir, wanted)

    if (done := finished_install()) is not None:
        return _already_installed(spec, install_dir, done, started)

    timeout = lock.lock_timeout_from(env)
    with lock.exclusive_lock(cache.lock_path(spec.name), purpose=f"set up {spec.display}", timeout=timeout):
        if (done := finished_install()) is not None:  # another process may have done it meanwhile
            ui.say(f"another process finished installing {spec.display} while we waited")
            return _already_installed(spec, install_dir, done, started)
        _remove_leftovers(cache, spec.name)
        fetched = sources.fetch_default_or(
            source_text,
            spec=spec,
            ref=ref,
            cache=cache,
            env=env,
            policy=retry.RetryPolicy.from_env(env),
        )
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
        )


def _wanted_identity(
    spec: BackendSpec, *, source_text: str | None, ref: str | None, env: Mapping[str, str]
) -> dict[str, str] | None:
    source = sources.parse_source(source_text or spec.default_source, spec=spec, ref=ref)
    return sources.identify_source(source, spec=spec, env=env)


def same_source(installed: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    """The pinned git commit and the PyPI copy of that commit are the same source."""
    if installed.get("dirty") == "true" or wanted.get("dirty") == "true":
        return False
    if wanted.get("commit") and installed.get("commit"):
        return bool(installed.get("commit") == wanted.get("commit"))
    return dict(installed) == dict(wanted)


def _installed_with(spec: BackendSpec, install_dir: Path, wanted: Mapping[str, str]) -> dict[str, Any] | None:
    marker = detect.read_marker(install_dir)
    if marker is None or marker.get("backend") != spec.name:
        return None
    source = marker.get("source")
    if not isinstance(source, dict) or not same_source(source, wanted):
        return None
    return marker


def _up_to_date(
    spec: BackendSpec,
    install_dir: Path,
    source: Mapping[str, str],
    started: float,
    *,
    why: str,
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
    )


def _already_installed(spec: BackendSpec, install_dir: Path, marker: Mapping[str, Any], started: float) -> SetupResult:
    source = marker.get("source") or {}
    label = source.get("commit") or source.get("location") or "?"
    return _up_to_date(spec, install_dir, source, started, why=f"is already installed at {install_dir} ({label})")


def _remove_leftovers(cache: CacheLayout, backend: str) -> None:
    """Staging directories of setups that were killed; safe because we hold the lock."""
    for leftover in cache.installs.glob(f".*-{backend}-*"):
        ui.debug(f"removing the leftover {leftover} of an interrupted setup")
        remove_tree(leftover)


def build_dir_for(cache: CacheLayout, backend: str, identity: Mapping[str, str]) -> Path:
    if identity.get("kind") == "local":
        key = hashlib.sha256(identity.get("location", "").encode()).hexdigest()[:12]
        return cache.builds / f"{backend}-local-{key}"
    key = identity.get("commit") or identity.get("sha256") or identity.get("location", "")
    return cache.builds / f"{backend}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


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
) -> SetupResult:
    install_dir = cache.install_dir(spec.name)
    log_path = cache.logs / f"setup-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    build_dir = build_dir_for(cache, spec.name, fetched.identity)
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

    marker = detect.read_marker(install_dir)
    if (
        not compiled
        and not force
        and marker is not None
        and same_source(marker.get("source") or {}, fetched.identity)
        and detect.probe(spec, install_dir, origin="cache", require_marker=True).available
    ):
        return _up_to_date(
            spec,
            install_dir,
            fetched.identity,
            started,
            why=f"at {install_dir} is up to date with {fetched.path}",
            log_path=log_path,
        )

    staging = cache.installs / f".staging-{spec.name}-{os.getpid()}"
    remove_tree(staging)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise os_error(exc, staging) from exc
    recipe.stage(project, staging, log_path)
    health = detect.probe(spec, staging, origin="cache", require_marker=False)
    if not health.available:
        remove_tree(staging)
        raise BuildFailed(
            f"the {spec.display} build finished but failed its health check: {health.reason}",
            log_path=log_path,
            next_step="check that the source is a real llama.cpp / bitnet.cpp tree and rerun with --force",
        )
    write_json_atomic(
        staging / detect.INSTALL_MARKER,
        {
            "backend": spec.name,
            "source": dict(fetched.identity),
            "build_flags": cmake.flags_summary(cmake_args),
            "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_dir": str(build_dir),
        },
    )
    existed = install_dir.exists()
    _move_into_place(staging, install_dir, cache=cache, backend=spec.name)
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
    )


def _move_into_place(staging: Path, install_dir: Path, *, cache: CacheLayout, backend: str) -> None:
    old = cache.installs / f".old-{backend}-{os.getpid()}"
    try:
        if install_dir.exists():
            install_dir.rename(old)
        staging.rename(install_dir)
    except OSError as exc:
        raise os_error(exc, install_dir) from exc
    remove_tree(old)
