"""Run a suite's cases, each as its own ``crossval-per-token`` process.

Each case runs as ``python -m bitnet_crossval crossval-per-token --repair never --format json
--report FILE <its options>`` in the cases file's directory, through :func:`~bitnet_crossval.util.proc.run`:
a case that fails, crashes or is killed (SIGKILL included) ends only that case. Before any case
runs, the models are resolved once (a synthetic model written, Gemma fetched) and every case gets
its key (:mod:`.keys`); a case whose key has a result in the cache is not run again unless
``fresh``. Up to ``jobs`` cases run at once, within the cores and the memory
(:mod:`.resources`). Ctrl-C interrupts the running cases, keeps every result finished so far, and
raises :class:`~bitnet_crossval.errors.Interrupted`: the next run picks up where this one stopped.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitnet_crossval.backends.specs import BACKEND
from bitnet_crossval.crossval.candidates import parse_candidate
from bitnet_crossval.crossval.candidates.backend import ShimSpec
from bitnet_crossval.crossval.models import parse_model, resolve_model, shim_quantizer
from bitnet_crossval.crossval.options import CORES
from bitnet_crossval.errors import CommandTimedOut, Interrupted, SuiteError
from bitnet_crossval.store.sources import source_dirs
from bitnet_crossval.suite.cases import Case, CasesFile, case_options, key_of
from bitnet_crossval.suite.defaults import DEFAULT_CASE_TIMEOUT
from bitnet_crossval.suite.keys import KeyInputs, backend_facts, case_files, passed_through, suite_version
from bitnet_crossval.suite.outcome import CaseOutcome, not_run, outcome_from_child, timed_out
from bitnet_crossval.suite.resources import job_limit
from bitnet_crossval.suite.result import SuiteResult
from bitnet_crossval.suite.shard import Shard
from bitnet_crossval.suite.store import LOG_FILE, REPORT_FILE, STDOUT_FILE, ResultStore
from bitnet_crossval.util import proc, ui
from bitnet_crossval.util.files import file_sha256, remove_tree
from bitnet_crossval.util.machine import available_memory, usable_cores
from bitnet_crossval.util.options import Flag

if TYPE_CHECKING:
    from bitnet_crossval.context import SuiteContext


@dataclass(frozen=True, kw_only=True)
class SuiteRequest:
    cases: CasesFile
    shard: Shard | None = None
    jobs: int = 1
    """Cases at once; 0: as many as the cores and the memory allow."""
    fresh: bool = False
    """Run every case again, ignoring the results of earlier runs."""
    case_timeout: float = DEFAULT_CASE_TIMEOUT
    verbose: bool = False
    program: tuple[str, ...] = field(default_factory=lambda: (sys.executable, "-m", "bitnet_crossval"))
    """The command line that runs a case's ``crossval-per-token`` (this interpreter and this suite)."""

    def selected(self) -> list[Case]:
        return [case for case in self.cases.cases if self.shard is None or self.shard.holds(case.index)]


@dataclass(frozen=True, kw_only=True)
class _Planned:
    case: Case
    key: str
    model_bytes: int = 0
    ready: CaseOutcome | None = None
    """Known without running: a result from the cache, or why the case cannot start."""


def run_suite(
    request: SuiteRequest,
    ctx: SuiteContext,
    *,
    unusable: Mapping[str, SuiteError] | None = None,
    child_env: Mapping[str, str] | None = None,
) -> SuiteResult:
    """Every selected case's outcome, in the cases file's order. ``unusable`` names the backends
    the preflight found unusable: their cases fail with that error and run nothing. Each case's
    process gets ``child_env`` (default: the context's environment)."""
    started = time.monotonic()
    store = ResultStore(ctx.cache)
    store.remove_leftovers()
    planned = _plan(request, ctx, store, unusable or {})
    to_run = [p for p in planned if p.ready is None]
    outcomes = {p.case.index: p.ready for p in planned if p.ready is not None}
    cores = usable_cores()
    limit = job_limit(
        request.jobs,
        largest_model=max((p.model_bytes for p in to_run), default=0),
        cores=cores,
        memory=available_memory(),
    )
    shard = f" (shard {request.shard.label} of {len(request.cases.cases)})" if request.shard else ""
    reused = sum(bool(p.ready and p.ready.cached) for p in planned)
    workers = max(1, min(limit.jobs, len(to_run)))  # no more at once than there are cases
    at_once = f", {workers} at a time" if to_run else ""
    held_back = limit.capped and len(to_run) > limit.jobs
    capped = f"; --jobs {request.jobs} is more than the machine allows ({limit.reason})" if held_back else ""
    ui.say(
        f"crossval-suite: {_count(len(planned), 'case')}{shard}: {reused} reused from earlier runs, "
        f"{len(to_run)} to run{at_once}{capped}"
    )
    share = max(1, cores // workers) if workers > 1 else None
    stop = threading.Event()
    done = len(planned) - len(to_run)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="case") as pool:
        futures: dict[Future[CaseOutcome], _Planned] = {
            pool.submit(_run_case, p, request, child_env or ctx.env, store, stop, cores=share): p for p in to_run
        }
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[outcome.case.index] = outcome
                done += 1
                ui.say(f"[{done}/{len(planned)}] {outcome.status}: {outcome.case.id} ({outcome.seconds:.1f}s)")
        except KeyboardInterrupt:
            _stop_all(stop, pool)
            raise interrupted_error() from None
        except BaseException:
            _stop_all(stop, pool)  # a bug: stop the cases before it is reported
            raise
    return SuiteResult(
        name=request.cases.name,
        cases_file=str(request.cases.path),
        cases_digest=request.cases.digest,
        n_cases_in_file=len(request.cases.cases),
        shard=request.shard,
        outcomes=tuple(outcomes[p.case.index] for p in planned),
        wall_seconds=time.monotonic() - started,
        jobs=workers,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _stop_all(stop: threading.Event, pool: ThreadPoolExecutor) -> None:
    """Interrupt the running cases, start no more, and wait for them; finished results stay."""
    stop.set()
    pool.shutdown(wait=True, cancel_futures=True)


def interrupted_error() -> Interrupted:
    return Interrupted(next_step="rerun the same command: the cases that finished are not run again")


# --- before anything runs ---------------------------------------------------------------------------


def _plan(
    request: SuiteRequest, ctx: SuiteContext, store: ResultStore, unusable: Mapping[str, SuiteError]
) -> list[_Planned]:
    models: dict[tuple[str, str], tuple[Path | None, str, int, SuiteError | None]] = {}
    version = suite_version()
    planned = []
    for case in request.selected():
        backends = backends_of(case)
        _path, model_sha, model_bytes, model_error = _model(case, backends[0], ctx, models)
        key = KeyInputs(
            options=case.to_json(),
            model_sha256=model_sha,
            files=case_files(case, request.cases.directory),
            backends={name: backend_facts(ctx.constants.record(name)) for name in backends},
            environment=passed_through(ctx.env),
            suite_version=version,
        ).key()
        blocked = next((unusable[name] for name in backends if name in unusable), None) or model_error
        if blocked is not None:
            planned.append(_Planned(case=case, key=key, ready=not_run(case, key=key, error=blocked)))
            continue
        found = None if request.fresh else store.found(key, case)
        planned.append(_Planned(case=case, key=key, model_bytes=model_bytes, ready=found))
    return planned


def backends_of(case: Case) -> list[str]:
    """The backends a case needs: its reference first, then a backend candidate's."""
    reference = str(BACKEND.parse(_text(case.value(key_of(BACKEND)))))
    spec = parse_candidate(_text(case.value("candidate")))
    if isinstance(spec, ShimSpec) and spec.backend != reference:
        return [reference, spec.backend]
    return [reference]


def _model(
    case: Case,
    backend: str,
    ctx: SuiteContext,
    known: dict[tuple[str, str], tuple[Path | None, str, int, SuiteError | None]],
) -> tuple[Path | None, str, int, SuiteError | None]:
    """The case's model file, its sha256 and size, resolved once per model (and backend, whose
    source tree gives the synthetic models their vocabulary); or why it cannot be had."""
    text = _text(case.value("model"))
    if (text, backend) not in known:
        try:
            record = ctx.constants.record(backend)
            path = resolve_model(
                parse_model(text),
                cache=ctx.cache,
                env=ctx.env,
                source_dirs=source_dirs(record) if record else [],
                quantizer=shim_quantizer(ctx.constants, backend, env=ctx.env),
            )
            known[(text, backend)] = (path, file_sha256(path), path.stat().st_size, None)
        except SuiteError as exc:
            known[(text, backend)] = (None, "", 0, exc)
        except OSError as exc:
            from bitnet_crossval.util.files import os_error

            known[(text, backend)] = (None, "", 0, os_error(exc, Path(text)))
    return known[(text, backend)]


def _text(value: str | bool | None) -> str:
    return value if isinstance(value, str) else ""


# --- one case ---------------------------------------------------------------------------------------------


def command_line(case: Case, *, program: tuple[str, ...], verbose: bool = False, cores: int | None = None) -> list[str]:
    """The ``crossval-per-token`` command of one case. Its ``--format json`` document on stdout is
    the case's report (the child writes no file into the cache itself: it refuses outputs there).
    ``cores``: the case's share of the machine when several run at once (``--cores``, unless the
    case sets it), so that each does not run its references side by side on cores another uses."""
    options = {key_of(option): option for option in case_options()}
    argv = [*program, "crossval-per-token", "--repair", "never"]
    argv += ["--format", "json"]
    for key, value in case.options:
        option = options[key]
        if isinstance(option, Flag):
            if value is True:
                argv.append(option.flag)
        else:
            argv.append(f"{option.flag}={value}")  # one word: a value may start with '-'
    if cores is not None and case.value(key_of(CORES)) is None:
        argv.append(f"{CORES.flag}={cores}")
    if verbose:
        argv.append("--verbose")
    return argv


def _run_case(
    planned: _Planned,
    request: SuiteRequest,
    env: Mapping[str, str],
    store: ResultStore,
    stop: threading.Event,
    *,
    cores: int | None = None,
) -> CaseOutcome:
    case, key = planned.case, planned.key
    attempt = store.attempt(key, case)
    argv = command_line(case, program=request.program, verbose=request.verbose, cores=cores)
    started = time.monotonic()
    outcome: CaseOutcome
    try:
        finished = proc.run(
            argv,
            cwd=request.cases.directory,
            env=env,
            log_path=attempt / LOG_FILE,
            check=False,
            timeout=request.case_timeout,
            stdout_path=attempt / STDOUT_FILE,
            stop=stop,
        )
        if finished.returncode in (0, 10) and (attempt / STDOUT_FILE).is_file():
            os.replace(attempt / STDOUT_FILE, attempt / REPORT_FILE)  # a verdict's document is the report
        outcome = outcome_from_child(
            case,
            key=key,
            exit_code=finished.returncode,
            seconds=time.monotonic() - started,
            stdout=attempt / STDOUT_FILE,
            report=attempt / REPORT_FILE,
            log=attempt / LOG_FILE,
        )
    except CommandTimedOut:
        outcome = timed_out(
            case, key=key, timeout=request.case_timeout, seconds=time.monotonic() - started, log=attempt / LOG_FILE
        )
    if stop.is_set():
        remove_tree(attempt)  # interrupted: this attempt tells nothing
        return outcome
    return store.keep(outcome, attempt)


def case_listing(request: SuiteRequest) -> list[dict[str, Any]]:
    """What ``--list`` shows: every case of the file, and whether this shard runs it."""
    return [
        {
            "index": case.index,
            "id": case.id,
            "options": case.to_json(),
            "shard": case.index % request.shard.count + 1 if request.shard else None,
            "selected": request.shard is None or request.shard.holds(case.index),
        }
        for case in request.cases.cases
    ]
