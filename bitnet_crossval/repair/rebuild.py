"""invoke rebuild: re-detect every backend, build the shim against each one found, and write
the constants file.

Concurrent rebuilds on one cache take turns on the ``rebuild`` lock: two CMake runs in one
shim build tree, or two renames over one shim executable, corrupt each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bitnet_crossval.backends.detect import Detection
from bitnet_crossval.backends.specs import SPECS, BackendSpec
from bitnet_crossval.context import SuiteContext
from bitnet_crossval.errors import PermissionDenied, SuiteError
from bitnet_crossval.reference.sources import shim_source_digest
from bitnet_crossval.store import lock
from bitnet_crossval.store.constants import BackendRecord, is_current, shim_problem, write_constants
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import remove_tree

REBUILD_LOCK = "rebuild"


@dataclass(frozen=True, kw_only=True)
class RebuildResult:
    path: Path
    records: Mapping[str, BackendRecord]
    written: bool
    shim_failures: Mapping[str, SuiteError]

    def to_json(self) -> dict[str, Any]:
        return {
            "constants": str(self.path),
            "written": self.written,
            "backends": {name: asdict(record) for name, record in self.records.items()},
            "shim_failures": {name: error.to_json() for name, error in self.shim_failures.items()},
        }


def record_for(detection: Detection) -> BackendRecord:
    marker = detection.marker
    return BackendRecord(
        available=detection.available,
        reason=detection.reason,
        origin=detection.origin,
        install_dir=str(detection.root) if detection.root else None,
        lib_dir=str(detection.lib_dir) if detection.lib_dir else None,
        include_dirs=[str(p) for p in detection.include_dirs],
        source=dict(marker.source) if marker else {},
        build_flags=list(marker.build_flags) if marker else [],
    )


def rebuild(ctx: SuiteContext) -> RebuildResult:
    """Detect, build a shim against each backend found, write the constants file if it changed."""
    ctx.cache.ensure()
    timeout = lock.lock_timeout_from(ctx.env)
    with lock.exclusive_lock(ctx.cache.lock_path(REBUILD_LOCK), purpose="rebuild the shims", timeout=timeout):
        records: dict[str, BackendRecord] = {}
        failures: dict[str, SuiteError] = {}
        # A rebuild detects afresh: each backend's libraries are loaded again, whatever an earlier
        # check or preflight remembered (a system library they need may have changed under the
        # same files).
        for spec in SPECS.values():
            remove_tree(ctx.cache.load_check(spec.name))
            remove_tree(ctx.cache.preflight_answer(spec.name))
        for spec, detection in ctx.detector.detect_all():
            record = record_for(detection)
            state = "available" if detection.available else f"not available ({detection.reason})"
            ui.say(f"{spec.display}: {state}", "ok" if detection.available else "info")
            if detection.available:
                try:
                    record = _with_shim(ctx, spec, detection, record)
                except PermissionDenied:
                    # Not a shim that failed to build: the cache cannot be written (exit 4), and
                    # the constants file is left as it was rather than rewritten without the shim.
                    raise
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

    Nothing is built: the shim recorded for each backend is taken as it is, if it is still the
    file that was built (a missing, replaced or truncated shim makes the file out of date).
    """
    records: dict[str, BackendRecord] = {}
    for spec, detection in ctx.detector.detect_all():
        record = record_for(detection)
        old = ctx.constants.record(spec.name)
        if old is not None and record.available:
            if old.shim is not None and shim_problem(old, source_digest=shim_source_digest()) is not None:
                return False
            record = replace(
                record, shim=old.shim, shim_api=old.shim_api, shim_sha256=old.shim_sha256, shim_source=old.shim_source
            )
        records[spec.name] = record
    return is_current(ctx.constants_path, records)


def _with_shim(ctx: SuiteContext, spec: BackendSpec, detection: Detection, record: BackendRecord) -> BackendRecord:
    from bitnet_crossval.reference import build as shim_build

    assert detection.lib_dir is not None
    built = shim_build.build_shim(
        include_dirs=list(detection.include_dirs),
        lib_dir=detection.lib_dir,
        build_dir=ctx.cache.shim_build(spec.name, detection.lib_dir),
        log_path=ctx.cache.log_file("shim", spec.name),
        env=ctx.env,
        backend=spec.name,
        backend_commit=record.source.get("commit", "unknown"),
        build_flags=" ".join(record.build_flags),
    )
    return replace(
        record,
        shim=str(built.executable),
        shim_api=built.api,
        shim_sha256=built.sha256,
        shim_source=built.source_digest,
    )
