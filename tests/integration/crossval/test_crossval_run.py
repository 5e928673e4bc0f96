"""`invoke crossval-per-token` against the real pinned llama.cpp, as a user runs it, and
:func:`run_crossval` as a script calls it.

- parity: the NumPy candidate agrees at every position, prompt and continuation, on synthetic
  llama, bitnet and gemma3 models, F32 and a quantised type each, held to the float KL limit
  (against the model itself, or on a quantised model against its float copy, which it follows);
- the check can fail: candidates with one deliberate bug (through cmd: and py:) end in the
  divergence verdict, exit 10, at the position the bug first shows;
- a tokenizer that disagrees is its own verdict, with the first differing index, before any logits;
- --format json prints exactly one JSON document on stdout (parity, divergence, mismatch, error);
- --report, --junit and --plot write what they promise.
"""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.context import load_context
from bitnet_crossval.crossval import CrossvalRequest, parse_candidate, parse_model, run_crossval
from bitnet_crossval.crossval.engine import GGUFModelFile
from tests.helpers import REPO_ROOT
from tests.integration.crossval.conftest import CrossvalCache, assert_one_error, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CANDIDATES = REPO_ROOT / "tests" / "integration" / "crossval" / "candidate_fns.py"
PY = "py:tests.integration.crossval.candidate_fns"
GENERATED = 16
FLOAT_KL = 0.002

MODELS = [
    ("llama", "F32"),
    ("llama", "Q4_0"),
    ("bitnet", "F32"),
    ("bitnet", "TQ2_0"),
    ("gemma3", "F32"),
    ("gemma3", "Q8_0"),
]


def cmd(*args: str) -> str:
    """A cmd: candidate run by this interpreter."""
    return "cmd:" + " ".join([sys.executable, *args])


def example_cmd(fault: str | None = None) -> str:
    extra = ["--fault", fault] if fault else []
    return cmd(str(REPO_ROOT / "examples" / "cmd_candidate.py"), "{model}", "{tokens}", "{out}", *extra)


def check_parity(doc: dict[str, Any], *, arch: str, tensor_type: str) -> None:
    """Parity at every position, the prompt's and the generated ones, under the right limit."""
    assert doc["verdict"] == "parity" and doc["passed"] is True, doc["summary"]
    n_prompt, rows = doc["n_prompt"], doc["rows"]
    assert n_prompt >= 2
    assert doc["reference"]["settings"]["generated"] == GENERATED
    assert len(doc["tokens"]) == len(rows) == n_prompt + GENERATED
    assert [row["position"] for row in rows] == list(range(len(rows)))
    assert [row["token"] for row in rows] == doc["tokens"]
    assert all(row["passed"] and row["reasons"] == [] for row in rows)
    assert doc["summary"]["n_failed"] == 0 and doc["summary"]["first_failure"] is None
    assert doc["summary"]["n_positions"] == len(rows)
    float_weights = tensor_type == "F32"
    assert doc["model"]["precision"] == ("float" if float_weights else "quantized")
    # The NumPy engine computes in float: on a quantised model it follows the float copy, at the float limit.
    assert doc["thresholds"]["kl_max"] == FLOAT_KL
    assert doc["references"]["followed"] == ("native" if float_weights else "dequantized")
    assert doc["model"]["architecture"] == arch
    assert tensor_type in doc["model"]["weight_types"]
    if float_weights:  # F32 on both sides: far below the limit, not just under it
        assert doc["summary"]["max_kl"] < 1e-5
        assert doc["summary"]["top1_agreement"] == 1.0


# --- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "tensor_type"), MODELS)
def test_cli_parity_at_every_position(crossval_cache: CrossvalCache, arch: str, tensor_type: str) -> None:
    result = crossval_cache.run("--model", f"synthetic:{arch}:{tensor_type}", "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = strict_json(result.stdout)
    check_parity(doc, arch=arch, tensor_type=tensor_type)
    assert doc["candidate"]["label"] == "numpy"
    assert "parity: the candidate agrees with the reference at every position" in result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr
    s = doc["summary"]
    print(f"\n{arch} {tensor_type}: max KL {s['max_kl']:.3g}, min cosine {s['min_cosine']:.6f}")


@pytest.fixture(scope="module")
def ctx(crossval_cache: CrossvalCache) -> Any:
    return load_context(crossval_cache.env)


@pytest.mark.parametrize(("arch", "tensor_type"), MODELS)
def test_api_parity_at_every_position(ctx: Any, arch: str, tensor_type: str) -> None:
    """The scripting API: a request and a context in, a result out; no process of our own."""
    request = CrossvalRequest(model=parse_model(f"synthetic:{arch}:{tensor_type}"), max_tokens=GENERATED)
    result = run_crossval(request, ctx)
    assert result.passed and result.verdict == "parity"
    assert result.summary is not None and result.summary.passed
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    check_parity(doc, arch=arch, tensor_type=tensor_type)
    assert {"model", "tokenize", "reference", "candidate", "compare", "total"} <= set(result.timings)


def test_api_with_a_model_file_and_tokens_and_no_continuation(
    ctx: Any, crossval_cache: CrossvalCache, tmp_path: Path
) -> None:
    model = run_crossval(CrossvalRequest(model=parse_model("synthetic:llama"), max_tokens=0), ctx).model["path"]
    ids = [1, 450, 4996, 17354, 1701, 29916, 432, 17204]
    tokens_file = tmp_path / "ids.json"
    tokens_file.write_text(json.dumps(ids))
    request = CrossvalRequest(model=parse_model(model), tokens_file=tokens_file, max_tokens=0)
    result = run_crossval(request, ctx)
    assert result.passed
    assert result.tokens == ids and result.n_prompt == len(ids) and len(result.rows) == len(ids)
    assert result.reference["settings"]["generated"] == 0


def test_api_bad_input_is_a_suite_error_not_a_crash(ctx: Any, tmp_path: Path) -> None:
    from bitnet_crossval.errors import BadInput

    tokens_file = tmp_path / "ids.txt"
    tokens_file.write_text("1 2 99999999")
    with pytest.raises(BadInput, match="outside the model's vocabulary"):
        run_crossval(CrossvalRequest(tokens_file=tokens_file), ctx)


# --- the check can fail ------------------------------------------------------------------------

# (model, candidate, first failing position). RoPE is the identity at position 0, so a wrong
# RoPE variant shows from position 1; a wrong sliding window only once a key falls out of the
# model's window (synthetic gemma3: window 6); the others from position 0.
FAULTS = [
    pytest.param("synthetic:llama", example_cmd("rope_type"), 1, id="cmd-llama-rope-pairing"),
    pytest.param("synthetic:llama", example_cmd("norm_eps"), 0, id="cmd-llama-norm-eps"),
    pytest.param("synthetic:bitnet", example_cmd("missing_sub_norm"), 0, id="cmd-bitnet-missing-sub-norm"),
    pytest.param("synthetic:gemma3", "py:examples.py_candidate:rope_type_bug", 1, id="py-gemma3-rope-pairing"),
    # The causal mask one step too wide: position 0 already sees position 1.
    pytest.param("synthetic:bitnet", f"{PY}:mask_ahead", 0, id="py-bitnet-mask-ahead"),
    pytest.param("synthetic:bitnet", f"{PY}:missing_sub_norm", 0, id="py-bitnet-missing-sub-norm"),
    # The engine has no attention-scale fault; a GQA head mapping mix-up is the attention bug here.
    pytest.param("synthetic:llama", f"{PY}:gqa_mapping", 0, id="py-llama-gqa-mapping"),
    pytest.param("synthetic:gemma3", f"{PY}:sliding_window", 6, id="py-gemma3-sliding-window"),
    pytest.param("synthetic:llama:Q4_0", f"{PY}:norm_eps", 0, id="py-llama-q4_0-norm-eps"),
]


@pytest.mark.parametrize(("model", "candidate", "first"), FAULTS)
def test_a_wrong_candidate_diverges_where_its_bug_shows(
    crossval_cache: CrossvalCache, model: str, candidate: str, first: int
) -> None:
    result = crossval_cache.run("--model", model, "--candidate", candidate, "--format", "json")
    line = assert_one_error(result, 10, "parity failed", f"first at position {first}")
    doc = strict_json(result.stdout)
    assert doc["verdict"] == "divergence" and doc["passed"] is False
    summary = doc["summary"]
    assert summary["first_failure"] == first == summary["failed_positions"][0]
    rows = doc["rows"]
    assert all(row["passed"] for row in rows[:first])
    assert not rows[first]["passed"] and rows[first]["reasons"]
    assert rows[first]["kl"] > doc["thresholds"]["kl_max"]
    assert doc["candidate"]["label"] == candidate
    assert f"divergence: {summary['n_failed']} of {summary['n_positions']} positions fail" in result.stderr
    print(f"\n{line}")


def test_rope_fault_leaves_position_0_exact(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run("--candidate", f"{PY}:rope_type", "--format", "json", "--max-tokens", "4")
    assert result.returncode == 10, result.stderr[-2000:]
    rows = strict_json(result.stdout)["rows"]
    assert rows[0]["kl"] < 1e-9 and rows[0]["top1_agree"]
    assert rows[1]["kl"] > FLOAT_KL


def test_text_mode_prints_nothing_on_stdout(crossval_cache: CrossvalCache) -> None:
    good = crossval_cache.run("--max-tokens", "2")
    bad = crossval_cache.run("--max-tokens", "2", "--candidate", example_cmd("norm_eps"))
    assert good.returncode == 0 and bad.returncode == 10, bad.stderr[-2000:]
    assert good.stdout == bad.stdout == ""
    assert "parity" in good.stderr and "position 0" in bad.stderr


# --- token mismatch ------------------------------------------------------------------------------

PROMPT = "The cat sat on the mat"
WORDS = ["▁The", "▁cat", "▁sat", "▁on", "▁the", "▁mat"]


def write_tokenizer(path: Path, vocab_file: Path, *, wrong: dict[str, str] | None = None, bos: bool = True) -> Path:
    """A Hugging Face tokenizer.json (word level, SentencePiece's ▁ for spaces) whose ids are the
    llama vocabulary's; ``wrong`` gives some words the id of another token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    pieces = GGUFModelFile(vocab_file).string_array("tokenizer.ggml.tokens")
    index = {piece: i for i, piece in enumerate(pieces)}
    wrong = wrong or {}
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({word: index[wrong.get(word, word)] for word in WORDS})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    if bos:
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(path))
    return path


def test_an_agreeing_tokenizer_lets_the_comparison_run(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json", crossval_cache.vocab)
    result = crossval_cache.run("--prompt", PROMPT, "--tokenizer", str(tokenizer), "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    doc = strict_json(result.stdout)
    assert doc["verdict"] == "parity" and doc["token_mismatch"] is None
    assert doc["n_prompt"] == 1 + len(WORDS)


@pytest.mark.parametrize(
    ("wrong", "bos", "index"),
    [({"▁sat": "▁sit"}, True, 3), ({}, False, 0)],
    ids=["a-word-with-another-id", "no-bos"],
)
def test_a_disagreeing_tokenizer_is_its_own_verdict_before_any_logits(
    crossval_cache: CrossvalCache, tmp_path: Path, wrong: dict[str, str], bos: bool, index: int
) -> None:
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json", crossval_cache.vocab, wrong=wrong, bos=bos)
    # A candidate that would exit 3 if it ran: exit 10 proves no candidate (and no logits) ran.
    crashing = cmd(str(CANDIDATES), "crash")
    junit = tmp_path / "junit.xml"
    result = crossval_cache.run(
        "--prompt", PROMPT, "--tokenizer", str(tokenizer), "--candidate", crashing,
        "--format", "json", "--junit", str(junit),
    )  # fmt: skip
    assert_one_error(result, 10, f"the tokenizer disagrees with the reference's at token index {index}")
    doc = strict_json(result.stdout)
    assert doc["verdict"] == "token-mismatch" and doc["passed"] is False
    mismatch = doc["token_mismatch"]
    assert mismatch["first_index"] == index
    assert mismatch["reference"][:index] == mismatch["candidate"][:index]
    assert mismatch["reference"][index] != mismatch["candidate"][index]
    assert doc["rows"] == [] and doc["summary"] is None
    assert "reference" not in doc["timings"] and "candidate" not in doc["timings"]
    assert f"token mismatch at index {index}" in result.stderr
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")


def test_tokenizer_with_tokens_file_is_bad_input(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json", crossval_cache.vocab)
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3")
    result = crossval_cache.run("--tokens-file", str(ids), "--tokenizer", str(tokenizer), "--format", "json")
    assert_one_error(result, 6, "--tokenizer")
    assert strict_json(result.stdout)["error"]["exit_code"] == 6


# --- report, JUnit, plot ------------------------------------------------------------------------


@pytest.mark.parametrize("broken", [False, True], ids=["parity", "divergence"])
def test_report_junit_and_plot(crossval_cache: CrossvalCache, tmp_path: Path, broken: bool) -> None:
    report, junit, plot = tmp_path / "report.json", tmp_path / "junit.xml", tmp_path / "plot.png"
    candidate = f"{PY}:rope_type" if broken else "numpy"
    result = crossval_cache.run(
        "--candidate", candidate, "--format", "json",
        "--report", str(report), "--junit", str(junit), "--plot", str(plot),
    )  # fmt: skip
    assert result.returncode == (10 if broken else 0), result.stderr[-3000:]
    doc = strict_json(result.stdout)
    assert strict_json(report.read_text()) == doc  # the report is the same document
    assert doc["schema"] == "bitnet-crossval/report"

    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("name") == "crossval-per-token"
    cases = suite.findall("testcase")
    assert [case.get("name") for case in cases] == [f"position-{i:04d}" for i in range(len(doc["rows"]))]
    failed = [i for i, case in enumerate(cases) if case.find("failure") is not None]
    assert failed == doc["summary"]["failed_positions"]
    assert int(suite.get("tests", "-1")) == len(cases) and int(suite.get("failures", "-1")) == len(failed)
    if broken:
        first = cases[failed[0]].find("failure")
        assert first is not None and "KL" in first.get("message", "")
        assert json.loads(first.text or "")["position"] == failed[0] == 1
    assert float(suite.get("time", "-1")) > 0

    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left beside them


def test_report_is_written_in_text_mode_too(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = crossval_cache.run("--max-tokens", "3", "--report", str(report))
    assert result.returncode == 0 and result.stdout == ""
    doc = strict_json(report.read_text())
    assert doc["verdict"] == "parity" and len(doc["rows"]) == doc["n_prompt"] + 3


def test_reports_overwrite_an_existing_file(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    report.write_text("old")
    junit.write_text("old")
    result = crossval_cache.run("--max-tokens", "1", "--report", str(report), "--junit", str(junit))
    assert result.returncode == 0, result.stderr[-2000:]
    assert strict_json(report.read_text())["verdict"] == "parity"
    assert ET.parse(junit).getroot().get("failures") == "0"


# --- the default run ---------------------------------------------------------------------------


def test_default_run_is_the_synthetic_llama_with_repair_auto(crossval_cache: CrossvalCache) -> None:
    """No options at all (repair defaults to auto outside CI): the cache is complete, so no repair."""
    from tests.helpers import run_invoke

    env = {k: v for k, v in crossval_cache.env.items() if k != "CI"}
    result = run_invoke(["crossval-per-token"], env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "repairing" not in result.stderr and "[reexec]" not in result.stderr
    assert "numpy vs llama (synthetic-llama-f32-" in result.stderr
    assert "parity: the candidate agrees" in result.stderr
    models = sorted(p.name for p in (crossval_cache.root / "models").glob("synthetic-llama-f32-*.gguf"))
    assert len(models) == 1


def test_the_synthetic_model_is_written_once_and_deterministically(crossval_cache: CrossvalCache) -> None:
    path = next((crossval_cache.root / "models").glob("synthetic-llama-f32-*.gguf"))
    before = (path.stat().st_mtime_ns, path.stat().st_size)
    assert crossval_cache.run("--max-tokens", "0").returncode == 0
    assert (path.stat().st_mtime_ns, path.stat().st_size) == before
    from bitnet_crossval.crossval.models import SYNTHETIC_SEED
    from bitnet_crossval.crossval.synthetic import write_synthetic_model

    again = path.with_name("again.gguf")
    write_synthetic_model(again, arch="llama", vocab=crossval_cache.vocab, seed=SYNTHETIC_SEED)
    try:
        assert again.read_bytes() == path.read_bytes()
    finally:
        os.unlink(again)


def test_logits_of_the_candidate_are_float32_in_the_comparison(ctx: Any) -> None:
    """A py: candidate may return float64: accepted and compared (parity), not refused."""
    request = CrossvalRequest(candidate=parse_candidate(f"{PY}:float64"), max_tokens=2)
    result = run_crossval(request, ctx)
    assert result.passed
    assert np.isfinite([row.kl for row in result.rows]).all()
