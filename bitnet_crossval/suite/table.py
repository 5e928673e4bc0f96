"""A suite's summary on stderr: one row per case, the statistics of every position pooled, and
what failed, in one line each."""

from __future__ import annotations

from typing import Any

from bitnet_crossval.crossval.report import statistics_line
from bitnet_crossval.crossval.statistics import kl_statistics
from bitnet_crossval.suite.outcome import CaseOutcome
from bitnet_crossval.suite.result import SuiteResult
from bitnet_crossval.util import ui

MAX_FAILURES_LISTED = 10
_STYLE = {"parity": "green", "divergence": "red", "token-mismatch": "red"}


def print_summary(result: SuiteResult, *, title: str) -> None:
    from rich.table import Table

    con = ui.console()
    table = Table(title=title)
    for column, justify in (
        ("#", "right"),
        ("case", "left"),
        ("positions", "right"),
        ("mean KL", "right"),
        ("p99 KL", "right"),
        ("max KL", "right"),
        ("same top-1", "right"),
        ("RMS Δp", "right"),
        ("status", "left"),
        ("time", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for outcome in result.outcomes:
        table.add_row(*_row(outcome))
    con.print(table)
    stats = kl_statistics(result.values())
    n_compared = sum(o.values is not None for o in result.outcomes)
    cases = "1 case" if n_compared == 1 else f"{n_compared} cases"
    con.print(f"overall, {stats.n_positions} positions of {cases}; {statistics_line(stats)}")
    failed = [o for o in result.outcomes if not o.passed]
    for outcome in failed[:MAX_FAILURES_LISTED]:
        where = f" (log: {outcome.log})" if outcome.log and outcome.status not in _STYLE else ""
        con.print(f"[red]{outcome.status}[/red] {outcome.case.id}: {outcome.sentence}{where}")
    if len(failed) > MAX_FAILURES_LISTED:
        con.print(f"... and {len(failed) - MAX_FAILURES_LISTED} more (the JSON report lists every case)")
    cached = sum(o.cached for o in result.outcomes)
    reused = f"; {cached} results reused from earlier runs (--fresh runs them again)" if cached else ""
    if result.passed:
        every = "the one case" if len(result.outcomes) == 1 else f"every one of the {len(result.outcomes)} cases"
        con.print(f"[green]suite: {every} reached parity{reused}[/green]")
    else:
        con.print(f"[red]suite: {result.counts_sentence()}[/red]{reused}")


def _row(outcome: CaseOutcome) -> tuple[str, ...]:
    summary: dict[str, Any] = outcome.summary or {}
    style = _STYLE.get(outcome.status, "yellow")
    status = f"[{style}]{outcome.status}[/{style}]" + (" (cached)" if outcome.cached else "")

    def number(name: str, spec: str) -> str:
        value = summary.get(name)
        return format(value, spec) if isinstance(value, (int, float)) else ""

    return (
        str(outcome.case.index),
        outcome.case.id,
        number("n_positions", "d"),
        number("mean_kl", ".3g"),
        number("p99_kl", ".3g"),
        number("max_kl", ".3g"),
        number("top1_agreement", ".1%"),
        number("rms_delta_p", ".3%"),
        status,
        f"{outcome.seconds:.1f}s",
    )
