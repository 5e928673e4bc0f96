"""Long sequences against the real pinned llama.cpp: a synthetic gemma3 whose sliding window (6)
is far shorter than the sequence, filled with real text past one passage, evaluated in blocks
by both sides (the reference 64 tokens per llama_decode call, the NumPy engine 256 per block with
a KV cache), compared position by position in blocks, through the command as a user runs it."""

from __future__ import annotations

import json

import pytest

from tests.integration.crossval.conftest import CrossvalCache, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

POSITIONS = 480  # under the synthetic models' context of 512; 8 reference blocks, 2 engine blocks


def test_a_long_sequence_past_the_window_reaches_parity_in_blocks(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(
        "--model",
        "synthetic:gemma3",
        "--prompt-set",
        "classics/gettysburg",
        "--prompt-tokens",
        str(POSITIONS - 16),
        "--max-tokens",
        "16",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    doc = strict_json(result.stdout)
    assert doc["verdict"] == "parity" and doc["summary"]["n_positions"] == POSITIONS
    assert doc["summary"]["max_kl"] < 0.002
    assert doc["reference"]["settings"]["n_ubatch"] == 64  # blocks, not one batch
    assert doc["reference"]["tokenization"]["prompt_tokens"] == POSITIONS - 16
    # The text was joined past the passage (the fake of a short text would stop short of the count).
    assert "".join(doc["pieces"]).count("Four score") >= 1
    # The table of a long run stays short: the head, the worst rows, the last.
    table = [line for line in result.stderr.splitlines() if line.startswith("│")]
    assert len(table) <= 12
    assert "(highest KL)" in result.stderr
    json.dumps(doc)  # the whole document is JSON


def test_a_window_fault_shows_only_past_the_window(crossval_cache: CrossvalCache) -> None:
    """The same long run with the candidate's window doubled: parity up to the window, and the
    first failure no earlier than it (the bug a long context exists to catch)."""
    result = crossval_cache.run(
        "--model",
        "synthetic:gemma3",
        "--prompt-set",
        "classics",
        "--prompt-tokens",
        "300",
        "--max-tokens",
        "0",
        "--candidate",
        "numpy:sliding_window",
        "--format",
        "json",
    )
    assert result.returncode == 10, result.stderr[-3000:]
    doc = strict_json(result.stdout)
    assert doc["summary"]["n_positions"] == 300
    assert doc["summary"]["first_failure"] >= 6
