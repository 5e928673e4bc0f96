"""invoke preflight: is a backend usable, and if not, repair it and prove it in a fresh process.

The flow, in order:

1. Guard: a process started with ``BITNET_REPAIR_PARENT=1`` is the re-executed child. It
   never repairs; it validates (detection passes *and* the constants file it read at start-up
   lists the backend) and exits 0, or 8 when the repair did not take.
2. Detection. Available and not ``--repair always``: done.
3. ``--repair never`` (the default when a CI variable is set): say what is missing and stop.
4. Repair: ``setup-cpp-auto`` under the backend's lock (network errors retried), then
   ``rebuild`` (shim + constants file), then re-exec the same command with the guard set
   and the new library directory on the loader path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from bitnet_crossval.backends.detect import Detection, paths_checked
from bitnet_crossval.backends.platform import library_path_variable
from bitnet_crossval.backends.specs import BackendSpec
from bitnet_crossval.context import SuiteContext
from bitnet_crossval.errors import BackendUnavailable, BadInput, BuildFailed, RevalidationFailed
from bitnet_crossval.reference.sources import shim_source_digest
from bitnet_crossval.repair.answer import remember_answer
from bitnet_crossval.repair.guard import is_repair_child
from bitnet_crossval.repair.options import RepairMode
from bitnet_crossval.store.constants import shim_problem
from bitnet_crossval.util import ui

# Set by the common CI services; a pipeline must not start a multi-minute build by surprise.
CI_VARIABLES = (
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "BUILDKITE",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "TF_BUILD",
    "TEAMCITY_VERSION",
    "BITBUCKET_BUILD_NUMBER",
    "APPVEYOR",
    "DRONE",
    "CODEBUILD_BUILD_ID",
)


def running_in_ci(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip().lower() not in {"", "0", "false", "no"} for name in CI_VARIABLES)


def repair_mode_from(value: RepairMode | None, env: Mapping[str, str]) -> RepairMode:
    """``--repair``'s value; unset means ``never`` when a CI variable is set, else ``auto``."""
    if value is None:
        return "never" if running_in_ci(env) else "auto"
    return value


@dataclass(frozen=True, kw_only=True)
class PreflightReport:
    backend: str
    display: str
    available: bool
    repaired: bool
    detection: Detection
    constants_status: str

    def to_json(self) -> dict[str, Any]:
        marker = self.detection.marker
        return {
            "backend": self.backend,
            "available": self.available,
            "repaired": self.repaired,
            "origin": self.detection.origin,
            "install_dir": str(self.detection.root) if self.detection.root else None,
            "lib_dir": str(self.detection.lib_dir) if self.detection.lib_dir else None,
            "include_dirs": [str(p) for p in self.detection.include_dirs],
            "source": dict(marker.source) if marker else None,
            "reason": self.detection.reason,
            "constants": self.constants_status,
        }

    def summary(self) -> str:
        where = f"{self.detection.origin}: {self.detection.root}"
        commit = self.detection.marker.commit if self.detection.marker else ""
        extra = f", commit {commit[:12]}" if commit else ""
        tail = " (auto-repaired)" if self.repaired else ""
        return f"{self.display} is available ({where}{extra}){tail}"


Reexec = Callable[..., NoReturn]


def preflight_for(ctx: SuiteContext, backend: str, repair: RepairMode | None) -> PreflightReport:
    """The preflight a command's ``--backend`` and ``--repair`` ask for (``crossval-per-token`` and
    ``crossval-selfcheck`` run it before they compare anything)."""
    from bitnet_crossval.backends.specs import spec_for

    return run_preflight(ctx, spec_for(backend), mode=repair_mode_from(repair, ctx.env))


def run_preflight(
    ctx: SuiteContext,
    spec: BackendSpec,
    *,
    mode: RepairMode,
    reexec: Reexec | None = None,
) -> PreflightReport:
    """Return a report for an available backend, raise a SuiteError, or re-exec (no return)."""
    if is_repair_child(ctx.env):
        return _validate_after_repair(ctx, spec)

    found = ctx.detector.detect(spec)
    if found.available and mode != "always":
        record = ctx.constants.record(spec.name)
        if record is not None and record.lib_dir != str(found.lib_dir):
            # The record describes another install (a copied cache, a changed LLAMA_CPP_DIR).
            record = None
        if record is None or not record.available:
            # Usable, but the constants this process started with do not record it (and so no
            # shim is recorded either): the repair is only the rebuild and the re-exec.
            unlisted = f"it does not list {spec.display} ({ctx.constants.problem or 'stale'})"
            if mode == "never":
                ui.warn(f"the constants file is stale: {unlisted}; `invoke rebuild` records it and builds the shim")
                return _report(ctx, spec, found, repaired=False)
            ui.say(f"repairing the constants file: {unlisted}")
        else:
            problem = shim_problem(record, source_digest=shim_source_digest())
            if problem is None:
                return _remembered(ctx, spec, _report(ctx, spec, found, repaired=False), shim=record.shim)
            if mode == "never":
                raise BackendUnavailable(
                    f"{spec.display} is installed but its shim cannot be used: {problem}",
                    next_step=f"run `invoke rebuild`, or `invoke preflight --backend {spec.name} --repair auto`",
                )
            ui.say(f"repairing the shim of {spec.display}: {problem}")
        assert found.lib_dir is not None
        _rebuild_and_reexec(ctx, spec, found.lib_dir, reexec)

    if not found.available and found.origin == spec.dir_env:
        raise BadInput(
            f"{spec.dir_env} points at {found.root}, which is not a usable {spec.display} build: {found.reason}",
            next_step=f"fix that build or unset {spec.dir_env} so the suite can install one into its cache",
        )
    if mode == "never":
        raise BackendUnavailable(
            f"{spec.display} is not available: {found.reason}",
            next_step=(
                f"run `invoke preflight --backend {spec.name} --repair auto` to install it"
                + ("" if spec.pypi_fallback else f" (offline: first set {spec.source_env} to a local checkout)")
                + f", or set {spec.dir_env} to an existing build"
            ),
        )

    why = "--repair always" if found.available else found.reason
    ui.say(f"repairing {spec.display} ({why})")
    from bitnet_crossval.provision import install  # the repair path only: keeps a passing preflight quick to start

    result = install.setup_backend(spec, cache=ctx.cache, env=ctx.env, force=(mode == "always"), detector=ctx.detector)
    _rebuild_and_reexec(ctx, spec, result.lib_dir, reexec)


def _rebuild_and_reexec(ctx: SuiteContext, spec: BackendSpec, lib_dir: Path, reexec: Reexec | None) -> NoReturn:
    from bitnet_crossval.repair.rebuild import rebuild

    result = rebuild(ctx)
    failure = result.shim_failures.get(spec.name)
    if failure is not None:
        # Without its shim the backend cannot serve as a reference: the repair did not work.
        raise BuildFailed(
            f"the shim for {spec.display} did not build: {failure.message}",
            log_path=failure.log_path,
            next_step=failure.next_step,
        )
    if reexec is None:
        from bitnet_crossval.repair.reexec import reexec_current_command

        reexec = reexec_current_command
    libvar = library_path_variable()
    current = ctx.env.get(libvar, "")
    reexec(env_updates={libvar: str(lib_dir) + (f"{os.pathsep}{current}" if current else "")})


def _validate_after_repair(ctx: SuiteContext, spec: BackendSpec) -> PreflightReport:
    found = ctx.detector.detect(spec)
    if not found.available:
        raise RevalidationFailed(f"{spec.display} is still unavailable after the repair: {found.reason}")
    record = ctx.constants.record(spec.name)
    if record is None or not record.available:
        raise RevalidationFailed(
            f"{spec.display} was installed but the constants file {ctx.constants_path} "
            f"does not list it ({ctx.constants.problem or 'marked unavailable'})"
        )
    problem = shim_problem(record, source_digest=shim_source_digest())
    if problem is not None:
        raise RevalidationFailed(f"{spec.display} was repaired but its shim cannot be used: {problem}")
    return _report(ctx, spec, found, repaired=True)


def _remembered(ctx: SuiteContext, spec: BackendSpec, report: PreflightReport, *, shim: str | None) -> PreflightReport:
    """``report`` of a clean pass, remembered so the next preflight can skip the check while
    nothing it looked at changes (repair/answer.py)."""
    if report.detection.root is None:
        return report
    checked = [*paths_checked(spec, report.detection), *([Path(shim)] if shim else [])]
    remember_answer(
        ctx.env,
        ctx.cache,
        spec.name,
        checked=checked,
        summary=report.summary(),
        report=report.to_json(),
        started_ns=ctx.started_ns,
    )
    return report


def _report(ctx: SuiteContext, spec: BackendSpec, found: Detection, *, repaired: bool) -> PreflightReport:
    return PreflightReport(
        backend=spec.name,
        display=spec.display,
        available=found.available,
        repaired=repaired,
        detection=found,
        constants_status=ctx.constants.status,
    )
