"""The checker checked: deliberately broken candidates must be caught, and located.

For each architecture of the engine's registry that has a synthetic model (``llama``,
``bitnet`` with ternary weights, ``gemma3``, and any registered later), the NumPy engine runs
once as it is (the verdict must be parity) and once per deliberate fault the architecture
lists (wrong RoPE variant or base, wrong norm epsilon, a missing bitnet sub-norm, swapped
gate/up, a GQA head mapping mix-up, an off-by-one causal mask either way, a wrong ternary
scale, a missing gemma3 Q/K norm, a wrong sliding window, ...). Each faulty run must end in
divergence, and ``--trace`` must name the tensor the fault first changes (the engine knows it:
``Engine.fault_site``). Anything else is a failure of the checker.

When the hf extra is installed, the ``hf`` candidate (Hugging Face transformers, as it is) runs
on each architecture's synthetic model too, and must reach parity; an architecture whose GGUF
transformers cannot read is listed as not run, with the reason, and is no failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bitnet_crossval.crossval.candidates import parse_candidate
from bitnet_crossval.crossval.models import SYNTHETIC_ARCHS, parse_model, resolve_model
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.crossval.run import run_crossval
from bitnet_crossval.errors import BadInput

if TYPE_CHECKING:
    from bitnet_crossval.backends.specs import BackendName
    from bitnet_crossval.context import SuiteContext
    from bitnet_crossval.crossval.result import CrossvalResult

ARCHITECTURES = SYNTHETIC_ARCHS
"""The architectures the self-check covers: every registered one with a synthetic model (a live view)."""
CANDIDATES = ("numpy", "hf")
"""The candidates the self-check runs: the NumPy engine with its faults, transformers as it is."""


@dataclass(frozen=True, kw_only=True)
class SelfcheckCase:
    architecture: str
    candidate: str = "numpy"
    """The candidate's kind: ``numpy`` (the engine, with the fault) or ``hf`` (transformers as it is)."""
    fault: str | None
    """None: the engine as it is, which must agree."""
    description: str
    verdict: str
    first_failure: int | None
    kl_at_first_failure: float | None
    expected_site: str | None
    found_site: str | None
    seconds: float
    not_run: str | None = None
    """Why the candidate could not run on this architecture (the hf candidate only); not a failure."""

    @property
    def caught(self) -> bool:
        if self.not_run is not None:
            return True
        return self.verdict == ("parity" if self.fault is None else "divergence")

    @property
    def located(self) -> bool:
        return self.fault is None or (self.found_site is not None and self.found_site == self.expected_site)

    @property
    def ok(self) -> bool:
        return self.caught and self.located

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "candidate": self.candidate,
            "fault": self.fault,
            "description": self.description,
            "verdict": self.verdict,
            "first_failure": self.first_failure,
            "kl_at_first_failure": self.kl_at_first_failure,
            "expected_site": self.expected_site,
            "found_site": self.found_site,
            "caught": self.caught,
            "located": self.located,
            "ok": self.ok,
            "seconds": self.seconds,
            "not_run": self.not_run,
        }


def parse_architectures(text: str | None) -> tuple[str, ...]:
    """``--arch``: one of :data:`ARCHITECTURES`, or all of them when not given."""
    from bitnet_crossval.util.options import parse_choice

    if not text or not text.strip():
        return tuple(ARCHITECTURES)
    return (parse_choice(text.strip(), option="--arch", choices=tuple(ARCHITECTURES)),)


def cases_for(architecture: str) -> list[str | None]:
    """The clean run, then every fault the architecture lists (its registry name or a GGUF name it runs)."""
    from bitnet_crossval.crossval.engine.archs import find_architecture

    found = find_architecture(architecture)
    if found is None:
        raise BadInput(
            f"{architecture!r} is not an architecture of the NumPy engine",
            next_step=f"use one of: {', '.join(ARCHITECTURES)}",
        )
    return [None, *(located.spec.name for located in found.FAULTS)]


def run_selfcheck(
    ctx: SuiteContext,
    *,
    backend: BackendName = "llama",
    architectures: Sequence[str] | None = None,
    candidates: Sequence[str] = CANDIDATES,
) -> list[SelfcheckCase]:
    """Every case of ``architectures`` (default: every one the self-check covers), in order: the
    NumPy engine's cases, then the hf candidate's (when installed) for each architecture."""
    results: list[SelfcheckCase] = []
    archs = tuple(ARCHITECTURES if architectures is None else architectures)
    if "numpy" in candidates:
        results += _numpy_cases(ctx, backend, archs)
    if "hf" in candidates:
        results += _hf_cases(ctx, backend, archs)
    return results


def hf_skipped() -> str | None:
    """Why the self-check leaves the hf candidate out here (its extra is missing), or None."""
    from bitnet_crossval.crossval.hf import missing_requirement

    return missing_requirement()


def _numpy_cases(ctx: SuiteContext, backend: BackendName, architectures: Sequence[str]) -> list[SelfcheckCase]:
    from bitnet_crossval.crossval.engine import FAULTS, EngineOptions, Fault, FaultName, load_engine

    results: list[SelfcheckCase] = []
    for arch in architectures:
        choice = parse_model(f"synthetic:{arch}")
        base = CrossvalRequest(model=choice, backend=backend, trace=True)
        for fault in cases_for(arch):
            candidate = parse_candidate(f"numpy:{fault}" if fault else "numpy")
            result = run_crossval(replace(base, candidate=candidate), ctx)
            expected = None
            if fault is not None:
                model = resolve_model(choice, cache=ctx.cache, env=ctx.env, source_dirs=[])
                site = load_engine(model, EngineOptions(fault=Fault(name=FaultName(fault)))).fault_site()
                expected = site.key if site is not None else None
            description = FAULTS[FaultName(fault)].description if fault else "the engine as it is"
            case = _case(result, architecture=arch, candidate="numpy", fault=fault, description=description)
            results.append(replace(case, expected_site=expected))
    return results


def _hf_cases(ctx: SuiteContext, backend: BackendName, architectures: Sequence[str]) -> list[SelfcheckCase]:
    """transformers as it is on each synthetic model: parity, or the reason it cannot load it."""
    import tempfile
    from pathlib import Path

    from bitnet_crossval.crossval.hf.gguf_support import gguf_support

    if hf_skipped() is not None:
        return []
    with tempfile.TemporaryDirectory(prefix="bitnet-selfcheck-hf-") as tmp:
        support = gguf_support(env=ctx.env, work_dir=Path(tmp), timeout=600)
    results: list[SelfcheckCase] = []
    for arch in architectures:
        description = f"transformers {support.transformers} as it is"
        reason = support.reason_unreadable(arch)
        if reason is not None:
            results.append(
                SelfcheckCase(
                    architecture=arch, candidate="hf", fault=None, description=description, verdict="not run",
                    first_failure=None, kl_at_first_failure=None, expected_site=None, found_site=None,
                    seconds=0.0, not_run=reason,
                )
            )  # fmt: skip
            continue
        request = CrossvalRequest(
            model=parse_model(f"synthetic:{arch}"), backend=backend, trace=True, candidate=parse_candidate("hf")
        )
        result = run_crossval(request, ctx)
        results.append(_case(result, architecture=arch, candidate="hf", fault=None, description=description))
    return results


def _case(
    result: CrossvalResult, *, architecture: str, candidate: str, fault: str | None, description: str
) -> SelfcheckCase:
    summary = result.summary
    first = summary.first_failure if summary else None
    departure = result.trace.first_departure if result.trace else None
    return SelfcheckCase(
        architecture=architecture,
        candidate=candidate,
        fault=fault,
        description=description,
        verdict=result.verdict,
        first_failure=first,
        kl_at_first_failure=result.rows[first].kl if first is not None else None,
        expected_site=None,
        found_site=departure.name if departure else None,
        seconds=result.timings.get("total", 0.0),
    )


def print_selfcheck(cases: list[SelfcheckCase]) -> None:
    from rich.table import Table

    from bitnet_crossval.util import ui

    table = Table(title="crossval self-check: deliberately broken candidates")
    columns = ("arch", "candidate", "fault", "verdict", "first failing position", "KL there", "expected tensor")
    for column in (*columns, "traced", "ok"):
        table.add_column(column)
    for case in cases:
        table.add_row(
            case.architecture,
            case.candidate,
            case.fault or "(none)",
            f"not run: {case.not_run}" if case.not_run else case.verdict,
            "" if case.first_failure is None else str(case.first_failure),
            "" if case.kl_at_first_failure is None else f"{case.kl_at_first_failure:.3g}",
            case.expected_site or "",
            case.found_site or "",
            "[green]yes[/green]" if case.ok else "[red]NO[/red]",
        )
    ui.console().print(table)
    skipped = hf_skipped()
    if skipped is not None and not any(case.candidate == "hf" for case in cases):
        ui.say(f"the hf candidate was not run: {skipped}")
