"""The checker checked: deliberately broken candidates must be caught, and located.

For each architecture of the engine's registry that has a synthetic model (``llama``,
``bitnet`` with ternary weights, ``gemma3``, and any registered later), the NumPy engine runs
once as it is (the verdict must be parity) and once per deliberate fault the architecture
lists (wrong RoPE variant or base, wrong norm epsilon, a missing bitnet sub-norm, swapped
gate/up, a GQA head mapping mix-up, an off-by-one causal mask either way, a wrong ternary
scale, a missing gemma3 Q/K norm, a wrong sliding window, ...). Each faulty run must end in
divergence, and ``--trace`` must name the tensor the fault first changes (the engine knows it:
``Engine.fault_site``). Anything else is a failure of the checker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bitnet_crossval.crossval.candidates import parse_candidate
from bitnet_crossval.crossval.models import SYNTHETIC_ARCHS, ModelChoice, parse_model, resolve_model
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.crossval.run import run_crossval
from bitnet_crossval.errors import BadInput

if TYPE_CHECKING:
    from bitnet_crossval.backends.specs import BackendName
    from bitnet_crossval.context import SuiteContext

ARCHITECTURES = SYNTHETIC_ARCHS
"""The architectures the self-check covers: every registered one with a synthetic model (a live view)."""


@dataclass(frozen=True, kw_only=True)
class SelfcheckCase:
    architecture: str
    fault: str | None
    """None: the engine as it is, which must agree."""
    description: str
    verdict: str
    first_failure: int | None
    kl_at_first_failure: float | None
    expected_site: str | None
    found_site: str | None
    seconds: float
    applies: bool = True
    """False: the fault cannot change this model's results (its reason is ``description``), so it
    was not run; only a model of one's own (``--model``) has such faults."""

    @property
    def caught(self) -> bool:
        return not self.applies or self.verdict == ("parity" if self.fault is None else "divergence")

    @property
    def located(self) -> bool:
        return (
            not self.applies
            or self.fault is None
            or (self.found_site is not None and self.found_site == self.expected_site)
        )

    @property
    def ok(self) -> bool:
        return self.caught and self.located

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "fault": self.fault,
            "description": self.description,
            "verdict": self.verdict,
            "first_failure": self.first_failure,
            "kl_at_first_failure": self.kl_at_first_failure,
            "expected_site": self.expected_site,
            "found_site": self.found_site,
            "applies": self.applies,
            "caught": self.caught,
            "located": self.located,
            "ok": self.ok,
            "seconds": self.seconds,
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
    weights: str = "F32",
    model: ModelChoice | None = None,
) -> list[SelfcheckCase]:
    """Every case of ``architectures`` (default: every one the self-check covers), in order, on
    synthetic models with ``weights`` matrices; or every case of ``model``'s architecture on it.
    On a quantised model the run's default ``--reference auto`` judges the engine against the
    model's float copy, at the float limit, and the trace follows the copy."""
    from bitnet_crossval.crossval.engine import FAULTS, EngineOptions, Fault, FaultName, load_engine

    results: list[SelfcheckCase] = []
    for arch, choice in _models(ctx, architectures, weights, model):
        base = CrossvalRequest(model=choice, backend=backend, trace=True)
        for fault in cases_for(arch):
            expected = None
            if fault is not None:
                path = resolve_model(choice, cache=ctx.cache, env=ctx.env, source_dirs=[])
                try:
                    site = load_engine(path, EngineOptions(fault=Fault(name=FaultName(fault)))).fault_site()
                except BadInput as exc:
                    if model is None:
                        raise  # every fault an architecture lists applies to its synthetic model
                    results.append(_not_applicable(arch, fault, exc.message))
                    continue
                expected = site.key if site is not None else None
            candidate = parse_candidate(f"numpy:{fault}" if fault else "numpy")
            result = run_crossval(replace(base, candidate=candidate), ctx)
            summary = result.summary
            first = summary.first_failure if summary else None
            departure = result.trace.first_departure if result.trace else None
            results.append(
                SelfcheckCase(
                    architecture=arch,
                    fault=fault,
                    description=FAULTS[FaultName(fault)].description if fault else "the engine as it is",
                    verdict=result.verdict,
                    first_failure=first,
                    kl_at_first_failure=result.rows[first].kl if first is not None else None,
                    expected_site=expected,
                    found_site=departure.name if departure else None,
                    seconds=result.timings.get("total", 0.0),
                )
            )
    return results


def _not_applicable(arch: str, fault: str, reason: str) -> SelfcheckCase:
    return SelfcheckCase(
        architecture=arch,
        fault=fault,
        description=reason,
        verdict="does not apply",
        first_failure=None,
        kl_at_first_failure=None,
        expected_site=None,
        found_site=None,
        seconds=0.0,
        applies=False,
    )


def _models(
    ctx: SuiteContext, architectures: Sequence[str] | None, weights: str, model: ModelChoice | None
) -> list[tuple[str, ModelChoice]]:
    """(architecture, model) of every model checked."""
    if model is None:
        return [
            (arch, parse_model(f"synthetic:{arch}:{weights}"))
            for arch in (ARCHITECTURES if architectures is None else architectures)
        ]
    from bitnet_crossval.crossval.engine import GGUFModelFile
    from bitnet_crossval.crossval.engine.archs import find_architecture

    path = resolve_model(model, cache=ctx.cache, env=ctx.env, source_dirs=[])
    arch = GGUFModelFile(path).architecture
    if find_architecture(arch) is None:
        raise BadInput(
            f"{path.name} is a {arch or 'model without an architecture'} model, which the NumPy engine does not run",
            next_step=f"use a model of one of: {', '.join(ARCHITECTURES)} (or gemma3-270m)",
        )
    return [(arch, model)]


def print_selfcheck(cases: list[SelfcheckCase]) -> None:
    from rich.table import Table

    from bitnet_crossval.util import ui

    table = Table(title="crossval self-check: deliberately broken candidates")
    for column in ("arch", "fault", "verdict", "first failing position", "KL there", "expected tensor", "traced", "ok"):
        table.add_column(column)
    for case in cases:
        table.add_row(
            case.architecture,
            case.fault or "(none)",
            case.verdict,
            "" if case.first_failure is None else str(case.first_failure),
            "" if case.kl_at_first_failure is None else f"{case.kl_at_first_failure:.3g}",
            case.expected_site or "",
            case.found_site or "",
            "[green]yes[/green]" if case.ok else "[red]NO[/red]",
        )
    ui.console().print(table)
