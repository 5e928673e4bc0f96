"""What one cross-validation found, and its JSON shape (the report, ``--format json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bitnet_crossval.crossval.metrics import PositionMetrics, Summary, Thresholds
from bitnet_crossval.crossval.nonfinite import NonFinite
from bitnet_crossval.crossval.tokens import TokenMismatch
from bitnet_crossval.crossval.trace import TraceComparison
from bitnet_crossval.util.jsonsafe import jsonable

Verdict = Literal["parity", "divergence", "token-mismatch", "non-finite"]

REPORT_SCHEMA = "bitnet-crossval/report"
REPORT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class CrossvalResult:
    verdict: Verdict
    model: dict[str, Any]
    reference: dict[str, Any]
    candidate: dict[str, Any]
    tokens: list[int]
    n_prompt: int
    pieces: list[str]
    thresholds: Thresholds
    rows: list[PositionMetrics]
    summary: Summary | None
    token_mismatch: TokenMismatch | None
    timings: dict[str, float]
    trace: TraceComparison | None = None
    trace_filtered: bool = False
    """Whether --trace-layers or --trace-names narrowed the trace."""
    non_finite: NonFinite | None = None
    """With the verdict ``non-finite``: which side's logits hold NaN or infinity, and where."""

    @property
    def passed(self) -> bool:
        return self.verdict == "parity"

    def next_step(self) -> str:
        if self.non_finite is not None:
            return self.non_finite.next_step()
        if self.token_mismatch is not None:
            return "make the candidate's tokenizer agree (BOS, special tokens, normalisation), or pass --tokens-file"
        if self.trace is None:
            return "rerun with --trace to see the first layer and op where the candidate departs"
        if self.trace.unmatched_filter is not None:
            return (
                f"widen {self.trace.unmatched_filter}: the whole name must match, and the reference's tensors are "
                "named like embd, attn_norm-0, Qcur-0, l_out-2, result_output (docs/howto/candidates.md lists them)"
            )
        if not self.trace.candidate_traced:
            return (
                "let the candidate write its intermediates: a {trace} placeholder in its cmd: line, or a trace= "
                "argument of its py: function (docs/howto/candidates.md)"
            )
        departure = self.trace.first_departure
        if departure is None:
            if self.trace_filtered:
                return "widen --trace-layers / --trace-names: everything traced agrees"
            return "everything traced agrees: compare the logits themselves (the table above) and the output head"
        if self.trace.last_agreement is None and self.trace_filtered:
            return (
                f"look at how the candidate computes {departure.name} ({departure.op}), the first tensor traced; "
                "widen --trace-layers / --trace-names to see whether an earlier one departs already"
            )
        if self.trace.last_agreement is None:
            return f"look at how the candidate computes {departure.name} ({departure.op}), the first tensor traced"
        return f"look at how the candidate computes {departure.name} ({departure.op}): the tensors before it agree"

    def failure_sentence(self) -> str:
        if self.non_finite is not None:
            return self.non_finite.sentence()
        if self.token_mismatch is not None:
            return (
                f"the tokenizer disagrees with the reference's at token index {self.token_mismatch.first_index}, "
                "so no logits were compared"
            )
        assert self.summary is not None and self.summary.first_failure is not None
        first = self.rows[self.summary.first_failure]
        where = f"; {self.trace.sentence()}" if self.trace is not None else ""
        return (
            f"parity failed: {self.summary.n_failed} of {self.summary.n_positions} positions diverge, first at "
            f"position {first.position} ({'; '.join(first.reasons)}){where}"
        )

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = jsonable(
            {
                "schema": REPORT_SCHEMA,
                "version": REPORT_VERSION,
                "verdict": self.verdict,
                "passed": self.passed,
                "model": self.model,
                "reference": self.reference,
                "candidate": self.candidate,
                "tokens": self.tokens,
                "n_prompt": self.n_prompt,
                "pieces": self.pieces,
                "thresholds": self.thresholds.to_json(),
                "rows": [row.to_json() for row in self.rows],
                "summary": self.summary.to_json() if self.summary else None,
                "token_mismatch": self.token_mismatch.to_json() if self.token_mismatch else None,
                "timings": self.timings,
                "trace": self.trace.to_json() if self.trace else None,
                "non_finite": self.non_finite.to_json() if self.non_finite else None,
            }
        )
        return document
