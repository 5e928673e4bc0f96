"""invoke rebuild: re-detect every backend, build the cpp/ shim against each one found, and
write the constants file (the Python counterpart of the Rust original's ``rebuild_xtask``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bitnet_crossval.backends.detect import Detection, detect
from bitnet_crossval.backends.specs import SPECS, BackendSpec
from bitnet_crossval.context import SuiteContext
from bitnet_crossval.errors import SuiteError
from bitnet_crossval.store.constants import BackendRecord, is_current, write_constants
from bitnet_crossval.util import ui


@dataclass(frozen=True, kw_only=True)
class RebuildResult:
    path: Path
    records: Mapping[str, BackendRecord]
    written: bool
    shim_failures: Mapping[str, SuiteError]


def record_for(detection: Detection) -> BackendRecord:
    marker = detection.marker or {}
    source = marker.get("source") if isinstance(marker.get("source"), dict) else {}
    flags = marker.get("build_flags") if isinstance(marker.get("build_flags"), list) else []
    return BackendRecord(
        available=detection.available,
        reason=detection.reason,
        origin=detection.origin,
        install_dir=str(detection.root) if detection.root else None,
        lib_dir=str(detection.lib_dir) if detection.lib_dir else None,
        include_dirs=[str(p) for p in detection.include_dirs],
        source={str(k): str(v) for k, v in (source or {}).items()},
        build_flags=[str(f) for f in flags or []],
    )


def _detected(ctx: SuiteContext) -> list[tuple[BackendSpec, Detection]]:
    return [(spec, detect(spec, env=ctx.env, cache=ctx.cache)) for spec in SPECS.values()]


def rebuild(ctx: SuiteContext, *, build_shims: bool = True) -> RebuildResult:
    """Detect, build a shim against each backend found, write the constants file if it changed."""
    records: dict[str, BackendRecord] = {}
    failures: dict[str, SuiteError] = {}
    for spec, detection in _detected(ctx):
        record = record_for(detection)
        state = "available" if detection.available else f"not available ({detection.reason})"
        ui.say(f"{spec.display}: {state}", "ok" if detection.available else "info")
        if detection.available and build_shims:
            try:
                record = _with_shim(ctx, spec, detection, record)
            except SuiteError as exc:
                failures[spec.name] = exc
                ui.say(f"the shim for {spec.display} did not build: {exc.message}", "error")
        records[spec.name] = record
    path = ctx.constants_path
    written = write_constants(path, records)
    ui.say(f"constants file {'written' if written else 'unchanged'}: {path}")
    return RebuildResult(path=path, records=records, written=written, shim_failures=failures)


def constants_are_current(ctx: SuiteContext) -> bool:
    """``invoke rebuild --check``: does the constants file match what detection finds now?

    Nothing is built, so the shim fields on file are taken as they are.
    """
    records: dict[str, BackendRecord] = {}
    for spec, detection in _detected(ctx):
        record = record_for(detection)
        old = ctx.constants.record(spec.name)
        if old is not None and record.available:
            record = replace(record, shim=old.shim, shim_api=old.shim_api)
        records[spec.name] = record
    return is_current(ctx.constants_path, records)


def shim_build_dir(ctx: SuiteContext, backend: str, lib_dir: Path) -> Path:
    key = hashlib.sha256(str(lib_dir).encode()).hexdigest()[:12]
    return ctx.cache.builds / f"shim-{backend}-{key}"


def _with_shim(ctx: SuiteContext, spec: BackendSpec, detection: Detection, record: BackendRecord) -> BackendRecord:
    from bitnet_crossval.reference import build as shim_build

    assert detection.lib_dir is not None
    log_path = ctx.cache.logs / f"shim-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    ctx.cache.ensure()
    built = shim_build.build_shim(
        include_dirs=list(detection.include_dirs),
        lib_dir=detection.lib_dir,
        build_dir=shim_build_dir(ctx, spec.name, detection.lib_dir),
        log_path=log_path,
        env=ctx.env,
        backend=spec.name,
        backend_commit=record.source.get("commit", "unknown"),
        build_flags=" ".join(record.build_flags),
    )
    return replace(record, shim=str(built.executable), shim_api=built.api)
