"""What a cross-validation shows and writes: a table on stderr, the JSON report, JUnit XML, a plot.

The table is for a person: every position of a short run; for a long run the first positions,
every failing one (up to a limit), the ones of highest KL and the last, then a summary, never a
wall of rows. Machines
read the JSON document (``--format json`` on stdout, ``--report FILE``) or the JUnit file.
"""

from __future__ import annotations

import io
import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_crossval.errors import BadInput, PermissionDenied, SuiteError, UnclassifiedError
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import dump_json, ensure_writable, refuse_non_regular, write_atomic

if TYPE_CHECKING:
    from bitnet_crossval.crossval.metrics import PositionMetrics, Summary
    from bitnet_crossval.crossval.result import CrossvalResult
    from bitnet_crossval.crossval.statistics import KlStatistics

FULL_TABLE_ROWS = 24
HEAD_ROWS = 4
MAX_FAILED_ROWS = 20
WORST_ROWS = 3


def check_output_path(path: Path, *, what: str) -> None:
    """An output file the user named: its directory must exist, nothing but a regular file may sit
    there, and an existing file must be one the user lets us replace (not read-only or immutable)."""
    if not path.parent.is_dir():
        raise BadInput(f"the directory of {what} {path} does not exist", next_step="create it, or name another file")
    refuse_non_regular(path, what=what)
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionDenied(
            f"{what} {path} is read-only or immutable, so the suite will not replace it",
            next_step=f"make {path} writable (chmod u+w; chattr -i when it is immutable), or name another file",
        )
    try:
        ensure_writable(path.parent)
    except PermissionDenied as exc:
        raise PermissionDenied(
            f"{what} {path} cannot be written: {exc.message}", next_step="name a file in a writable directory"
        ) from None


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BadInput(
            "--plot needs matplotlib, which is not installed",
            next_step="pip install 'bitnet-crossval-suite[plot]' (or pip install matplotlib), or drop --plot",
        ) from None


def rows_to_show(rows: list[PositionMetrics]) -> list[PositionMetrics | None]:
    """The rows of the table; None marks a gap of rows left out.

    A long run shows its first :data:`HEAD_ROWS` rows, its first :data:`MAX_FAILED_ROWS` failing
    ones, the :data:`WORST_ROWS` of highest KL (:func:`worst_positions`) and its last row, in
    position order, whatever the number of positions.
    """
    if len(rows) <= FULL_TABLE_ROWS:
        return list(rows)
    failed = [row.position for row in rows if not row.passed]
    keep = set(range(HEAD_ROWS)) | {len(rows) - 1} | set(failed[:MAX_FAILED_ROWS]) | set(worst_positions(rows))
    shown: list[PositionMetrics | None] = []
    previous = -1
    for position in sorted(keep):
        if position != previous + 1:
            shown.append(None)
        shown.append(rows[position])
        previous = position
    return shown


def worst_positions(rows: list[PositionMetrics], count: int = WORST_ROWS) -> list[int]:
    """The positions of the ``count`` highest KL values above 0 (none when both sides agree
    exactly), highest first; ties go to the earlier position."""
    ranked = sorted((row for row in rows if row.kl > 0.0), key=lambda row: (-row.kl, row.position))
    return [row.position for row in ranked[:count]]


def print_table(result: CrossvalResult) -> None:
    """The rich table and the summary, on stderr."""
    from rich.table import Table

    con = ui.console()
    if result.token_mismatch is not None:
        _print_token_mismatch(result)
        return
    summary = result.summary
    if summary is None:  # the reference's logits are not finite: nothing was compared
        if result.non_finite is not None:
            con.print(f"[red]non-finite: {result.non_finite.sentence()}[/red]")
        return
    table = Table(
        title=f"{result.candidate['label']} vs {result.reference['backend']} ({Path(result.model['path']).name})"
    )
    per_position = result.references is not None and result.references.per_position
    for column, justify in (
        ("pos", "right"),
        ("token", "left"),
        ("KL", "right"),
        *((("KL limit", "right"),) if per_position else ()),
        ("cosine", "right"),
        ("NMSE", "right"),
        ("max |Δ|", "right"),
        ("top-1", "center"),
        ("top-5", "right"),
        ("p(next) ref/cand", "right"),
        ("verdict", "left"),
    ):
        table.add_column(column, justify=justify)
    worst = set(worst_positions(result.rows)) if len(result.rows) > FULL_TABLE_ROWS else set()
    for row in rows_to_show(result.rows):
        if row is None:
            table.add_row(*(["…"] + [""] * (len(table.columns) - 1)))
            continue
        piece = result.pieces[row.position] if row.position < len(result.pieces) else ""
        marker = " (gen)" if row.position >= result.n_prompt else ""
        top1 = "=" if row.top1_agree else ("≈ tie" if row.near_tie else "≠")
        p_next = (
            "" if row.p_next_ref is None or row.p_next_cand is None else f"{row.p_next_ref:.3f}/{row.p_next_cand:.3f}"
        )
        verdict = "[green]ok[/green]" if row.passed else f"[red]FAIL[/red] {'; '.join(row.reasons)}"
        if row.position in worst:
            verdict += " (highest KL)"
        table.add_row(
            str(row.position),
            f"{row.token} {piece!r}{marker}",
            f"{row.kl:.2e}",
            *([f"{result.kl_limit(row.position):.2e}"] if per_position else []),
            f"{row.cosine:.6f}",
            f"{row.nmse:.2e}",
            f"{row.max_abs_diff:.3g}",
            top1,
            f"{row.top5_overlap}/5",
            p_next,
            verdict,
        )
    con.print(table)
    thresholds = result.thresholds
    if result.references is not None:
        con.print(result.references.sentence())
    limit = (
        result.references.limit_words()
        if result.references is not None and result.references.per_position
        else f"{thresholds.kl_max:g}"
    )
    con.print(
        f"{summary.n_positions} positions ({result.n_prompt} prompt + "
        f"{summary.n_positions - result.n_prompt} generated); "
        f"max KL {summary.max_kl:.3g} (limit {limit}, {result.model['precision']} weights), "
        f"mean KL {summary.mean_kl:.3g}, min cosine {summary.min_cosine:.6f}, max NMSE {summary.max_nmse:.3g}, "
        f"top-1 agreement {summary.top1_agreement:.0%} ({summary.n_near_ties} near ties)"
    )
    con.print(statistics_line(summary))
    if result.non_finite is not None:
        con.print(f"[red]non-finite: {result.non_finite.sentence()}[/red]")
    elif summary.passed:
        con.print("[green]parity: the candidate agrees with the reference at every position[/green]")
    else:
        first = result.rows[summary.first_failure or 0]
        con.print(
            f"[red]divergence: {summary.n_failed} of {summary.n_positions} positions fail; the first is position "
            f"{first.position} ({'; '.join(first.reasons)})[/red]"
        )
    if result.trace is not None:
        print_trace(result)


def statistics_line(stats: Summary | KlStatistics) -> str:
    """The distribution statistics in one line, in the order llama.cpp's KL-divergence tool
    prints them (Δp in percent, as it does)."""
    same = stats.same_top1
    return (
        f"KL statistics: mean {stats.mean_kl:.3g}, median {stats.median_kl:.3g}, p90 {stats.p90_kl:.3g}, "
        f"p99 {stats.p99_kl:.3g}, p99.9 {stats.p999_kl:.3g}, max {stats.max_kl:.3g}; same top-1 {same:.2%}; "
        f"Δp mean {stats.mean_delta_p:+.3%}, RMS {stats.rms_delta_p:.3%}"
    )


def print_trace(result: CrossvalResult) -> None:
    """The last agreeing tensors and the first that departs, then the one-sentence answer."""
    from rich.table import Table

    trace = result.trace
    assert trace is not None
    con = ui.console()
    if trace.compared:
        table = Table(title=f"trace, positions 0-{trace.positions[-1]} ({trace.precision} tolerances; logits by KL)")
        for column in ("#", "tensor", "op", "shape", "rel. error", "limit", "cosine", "positions", "layout", ""):
            table.add_column(column)
        start = max(0, len(trace.compared) - 6)
        if start:
            table.add_row("…", "", "", "", "", "", "", "", "", "")
        for index, t in enumerate(trace.compared[start:], start=start):
            mark = "[green]agrees[/green]" if t.agrees else "[red]departs[/red]"
            error, limit = (
                (f"KL {t.max_kl:.2e}", f"KL {trace.kl_max:g}") if t.max_kl is not None
                else (f"{t.max_rel_error:.2e}", f"{t.tolerance:g}")
            )  # fmt: skip
            where = f"worst {t.worst_position}"
            if t.first_position is not None:
                where = f"first {t.first_position}, {where}"
            table.add_row(
                str(index),
                t.name,
                t.op,
                "x".join(str(d) for d in t.shape),
                error,
                limit,
                f"{t.min_cosine:.5f}",
                where,
                t.layout,
                mark,
            )
        con.print(table)
    style = "red" if trace.first_departure is not None else "yellow"
    con.print(f"[{style}]trace: {trace.sentence()}[/{style}]")
    if trace.missing_in_candidate:
        shown = ", ".join(trace.missing_in_candidate[:8]) + (" ..." if len(trace.missing_in_candidate) > 8 else "")
        con.print(
            f"the candidate did not provide {len(trace.missing_in_candidate)} tensors the reference computed: {shown}"
        )
    if trace.only_in_candidate:
        con.print(f"the candidate wrote tensors the reference does not name: {', '.join(trace.only_in_candidate[:8])}")


def _print_token_mismatch(result: CrossvalResult) -> None:
    mismatch = result.token_mismatch
    assert mismatch is not None
    i = mismatch.first_index
    ref = mismatch.reference[max(0, i - 3) : i + 4]
    cand = mismatch.candidate[max(0, i - 3) : i + 4]
    ui.console().print(
        f"[red]token mismatch at index {i}[/red]: the reference tokenizer gives {list(ref)}, "
        f"the --tokenizer gives {list(cand)} (around index {i}; {len(mismatch.reference)} vs "
        f"{len(mismatch.candidate)} tokens in all)"
    )


def write_outputs(result: CrossvalResult, paths: Mapping[str, Path]) -> None:
    """The files asked for, by option name: ``report`` (JSON), ``junit`` (XML), ``plot`` (PNG).

    A file that cannot be written is an error naming that file and its option, never the cache.
    """
    writers = {"report": write_report, "junit": write_junit, "plot": write_plot}
    for name, path in paths.items():
        try:
            writers[name](result, path)
        except SuiteError as exc:
            raise _output_error(exc, path, flag="--" + name) from exc


def _output_error(exc: SuiteError, path: Path, *, flag: str) -> SuiteError:
    """``exc`` (from writing ``path``) with a next step about that file rather than the cache's."""
    if isinstance(exc, PermissionDenied):
        return PermissionDenied(
            exc.message,
            next_step=f"make {path} and its directory writable (chattr -i, or -a, when it is immutable or "
            f"append-only), or name another file with {flag}",
        )
    if type(exc) is UnclassifiedError:  # a full disk, an I/O error
        return UnclassifiedError(exc.message, next_step=f"{exc.next_step}, or name another file with {flag}")
    return exc  # bad input is already about the file the user named


def write_report(result: CrossvalResult, path: Path) -> None:
    write_atomic(path, dump_json(result.to_json()), what="the report")


def write_junit(result: CrossvalResult, path: Path) -> None:
    """One test case per position (a CI system shows which failed), or one for a token mismatch."""
    suite = ET.Element("testsuite", name="crossval-per-token")
    cases = 0
    failures = 0
    if result.token_mismatch is not None:
        case = ET.SubElement(suite, "testcase", classname="crossval", name="tokenization")
        ET.SubElement(case, "failure", message=f"token mismatch at index {result.token_mismatch.first_index}")
        cases, failures = 1, 1
    if result.non_finite is not None:
        case = ET.SubElement(suite, "testcase", classname="crossval", name=f"finite-{result.non_finite.side}")
        ET.SubElement(case, "failure", message=result.non_finite.sentence())
        cases, failures = cases + 1, failures + 1
    for row in result.rows:
        case = ET.SubElement(suite, "testcase", classname="crossval", name=f"position-{row.position:04d}")
        cases += 1
        if not row.passed:
            failures += 1
            ET.SubElement(case, "failure", message="; ".join(row.reasons)).text = json.dumps(row.to_json())
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("time", f"{result.timings.get('total', 0.0):.3f}")
    data = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    write_atomic(path, data, what="the JUnit file")


def write_plot(result: CrossvalResult, path: Path) -> None:
    """KL, 1 - cosine and NMSE per position on a log scale, the KL limit and the first failure marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    positions = [row.position for row in result.rows]
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    floor = 1e-16

    def series(values: list[float]) -> list[float]:
        return [max(v, floor) if math.isfinite(v) else float("nan") for v in values]

    ax.plot(positions, series([r.kl for r in result.rows]), marker="o", markersize=3, label="KL(ref || cand)")
    ax.plot(positions, series([1.0 - r.cosine for r in result.rows]), marker=".", markersize=3, label="1 - cosine")
    ax.plot(positions, series([r.nmse for r in result.rows]), marker=".", markersize=3, label="NMSE")
    if result.references is not None and result.references.per_position:
        ax.plot(
            positions,
            [result.kl_limit(p) for p in positions],
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label="KL limit per position",
        )
    else:
        ax.axhline(
            result.thresholds.kl_max,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"KL limit {result.thresholds.kl_max:g}",
        )
    ax.axvline(result.n_prompt - 0.5, color="grey", linestyle=":", linewidth=1, label="generated from here")
    if result.summary is not None and result.summary.first_failure is not None:
        ax.axvline(
            result.summary.first_failure,
            color="tab:red",
            linewidth=1.5,
            label=f"first failure: {result.summary.first_failure}",
        )
    ax.set_yscale("log")
    ax.set_xlabel("position")
    ax.set_title(f"{result.candidate['label']} vs {result.reference['backend']}: {result.verdict}")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    # Rendered in memory, then written like every output: a fresh temporary file renamed into place.
    image = io.BytesIO()
    fig.savefig(image, format="png")
    plt.close(fig)
    write_atomic(path, image.getvalue(), what="the plot")
