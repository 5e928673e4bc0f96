"""The checker checked: deliberately broken candidates must be caught, and located.

For each architecture of the engine's registry that has a synthetic model (``llama``,
``bitnet`` with ternary weights, ``gemma3``, and any registered later), the NumPy engine runs
once as it is (the verdict must be parity) and once per deliberate fault the architecture
lists (wrong RoPE variant or base, wrong norm epsilon, a missing bitnet sub-norm, swapped
gate/up, a GQA head mapping mix-up, an off-by-one causal mask either way, a wrong ternary
scale, a missing gemma3 Q/K norm, a wrong sliding window, ...). Each faulty run must end in
divergence, and ``--trace`` must name the tensor the fault first changes (the engine knows it:
``Engine.fault_site``). Anything else is a failure of the checker. A fault that leaves the
first positions alone says how many positions it needs (``Engine.fault_positions``: the
sliding window's, its window and a few more); its case runs on exactly that many tokens of
the built-in ``classics`` prompt set, so Gemma 3's window of 512 is crossed too.

When the hf extra is installed, the ``hf`` candidate (Hugging Face transformers, as it is) runs
on each architecture's synthetic model too, and must reach parity; an architecture whose GGUF
transformers cannot read is listed as not run, with the reason, and is no failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from bitnet_crossval.crossval.candidates import parse_candidate
from bitnet_crossval.crossval.models import (
    SYNTHETIC_ARCHS,
    ModelChoice,
    parse_model,
    resolve_model,
    shim_quantizer,
)
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.crossval.run import run_crossval
from bitnet_crossval.errors import BadInput

if TYPE_CHECKING:
    from bitnet_crossval.backends.specs import BackendName
    from bitnet_crossval.context import SuiteContext
    from bitnet_crossval.crossval.result import CrossvalResult

ARCHITECTURES = SYNTHETIC_ARCHS
"""The architectures the self-check covers: every registered one with a synthetic model (a live view)."""
SELFCHECK_PROMPT_SET = "classics"
"""The built-in prompt set of a fault that needs a run longer than the default prompt (``--prompt-set``)."""
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
    applies: bool = True
    """False: the fault cannot change this model's results (its reason is ``description``), so it
    was not run; only a model of one's own (``--model``) has such faults."""

    @property
    def caught(self) -> bool:
        if self.not_run is not None or not self.applies:
            return True
        return self.verdict == ("parity" if self.fault is None else "divergence")

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
            "candidate": self.candidate,
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
    weights: str = "F32",
    model: ModelChoice | None = None,
) -> list[SelfcheckCase]:
    """Every case of ``architectures`` (default: every one the self-check covers), in order, on
    synthetic models with ``weights`` matrices, or every case of ``model``'s architecture on it:
    the NumPy engine's cases, then the hf candidate's (when installed) on each model. On a
    quantised model the run's default ``--reference auto`` judges the engine against the
    model's float copy, at the float limit, and the trace follows the copy."""
    results: list[SelfcheckCase] = []
    models = _models(ctx, architectures, weights, model)
    if "numpy" in candidates:
        results += _numpy_cases(ctx, backend, models, own_model=model is not None)
    if "hf" in candidates:
        results += _hf_cases(ctx, backend, models)
    return results


def hf_skipped() -> str | None:
    """Why the self-check leaves the hf candidate out here (its extra is missing), or None."""
    from bitnet_crossval.crossval.hf import missing_requirement

    return missing_requirement()


def _numpy_cases(
    ctx: SuiteContext, backend: BackendName, models: Sequence[tuple[str, ModelChoice]], *, own_model: bool
) -> list[SelfcheckCase]:
    from bitnet_crossval.crossval.engine import FAULTS, EngineOptions, Fault, FaultName, load_engine

    results: list[SelfcheckCase] = []
    quantizer = shim_quantizer(ctx.constants, backend, env=ctx.env)
    for arch, choice in models:
        base = CrossvalRequest(model=choice, backend=backend, trace=True)
        for fault in cases_for(arch):
            expected = None
            request = base
            if fault is not None:
                path = resolve_model(choice, cache=ctx.cache, env=ctx.env, source_dirs=[], quantizer=quantizer)
                try:
                    engine = load_engine(path, EngineOptions(fault=Fault(name=FaultName(fault))))
                    site = engine.fault_site()
                except BadInput as exc:
                    if not own_model:
                        raise  # every fault an architecture lists applies to its synthetic model
                    results.append(_not_applicable(arch, fault, exc.message))
                    continue
                expected = site.key if site is not None else None
                request = _long_enough(base, engine.fault_positions())
            candidate = parse_candidate(f"numpy:{fault}" if fault else "numpy")
            result = run_crossval(replace(request, candidate=candidate), ctx)
            description = FAULTS[FaultName(fault)].description if fault else "the engine as it is"
            case = _case(result, architecture=arch, candidate="numpy", fault=fault, description=description)
            results.append(replace(case, expected_site=expected))
    return results


def _long_enough(request: CrossvalRequest, positions: int | None) -> CrossvalRequest:
    """``request`` with a prompt of exactly ``positions`` tokens from the built-in prompt set, for a
    fault that leaves the first positions alone (a sliding window longer than the default prompt);
    the trace still stops at the first failing position."""
    if positions is None:
        return request
    from bitnet_crossval.crossval.texts import parse_prompt_set, prompt_text

    choice = parse_prompt_set(SELFCHECK_PROMPT_SET)
    return replace(request, prompt=prompt_text(choice), prompt_set=choice.label, prompt_tokens=positions)


def _hf_cases(
    ctx: SuiteContext, backend: BackendName, models: Sequence[tuple[str, ModelChoice]]
) -> list[SelfcheckCase]:
    """transformers as it is on each model: parity, or the reason it cannot load it."""
    import tempfile
    from pathlib import Path

    from bitnet_crossval.crossval.hf.gguf_support import gguf_support

    if hf_skipped() is not None:
        return []
    with tempfile.TemporaryDirectory(prefix="bitnet-selfcheck-hf-") as tmp:
        support = gguf_support(env=ctx.env, work_dir=Path(tmp), timeout=600)
    results: list[SelfcheckCase] = []
    for arch, choice in models:
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
        request = CrossvalRequest(model=choice, backend=backend, trace=True, candidate=parse_candidate("hf"))
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


def _not_applicable(arch: str, fault: str, reason: str) -> SelfcheckCase:
    return SelfcheckCase(
        architecture=arch,
        candidate="numpy",
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
