"""``--shard I/N``: which of a suite's cases one of N CI jobs runs.

Case ``k`` (0-based, in the order the cases file expands to) belongs to shard ``k mod N + 1``:
the split depends on nothing but the file and N, so every job computes the same one, and the
shards' sizes differ by at most one case. The CI system runs the N jobs; ``crossval-merge``
joins their reports into what one unsharded run reports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bitnet_crossval.errors import BadInput

MAX_SHARDS = 10_000
_SHARD = re.compile(r"\s*([0-9]{1,6})\s*/\s*([0-9]{1,6})\s*")


@dataclass(frozen=True, kw_only=True)
class Shard:
    index: int
    """1-based."""
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, case_index: int) -> bool:
        return case_index % self.count == self.index - 1

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count}


def parse_shard(text: str, *, flag: str = "--shard") -> Shard:
    match = _SHARD.fullmatch(text)
    if match is not None:
        index, count = int(match.group(1)), int(match.group(2))
        if 1 <= index <= count <= MAX_SHARDS:
            return Shard(index=index, count=count)
    raise BadInput(
        f"{flag} {text!r} is not I/N with 1 <= I <= N <= {MAX_SHARDS}",
        next_step=f"pass {flag} 1/4 (the first of four shards)",
    )
