"""``run_crossval`` on the fake reference shim (fake_shim.py): the whole flow without llama.cpp.

The fake's reference is the NumPy engine without a fault, so the candidate ``numpy`` must agree
to the last bit, every ``numpy:FAULT`` must diverge where its fault first shows, and --trace must
stop at the fault's site. The fake's misbehaviours (environment switches) check how a failing
reference is classified.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.context import SuiteContext
from bitnet_crossval.crossval import CrossvalRequest, CrossvalResult, parse_candidate, parse_model, run_crossval
from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_FLOAT
from bitnet_crossval.crossval.engine import EngineOptions, Fault, load_engine
from bitnet_crossval.crossval.models import resolve_model
from bitnet_crossval.errors import (
    BackendUnavailable,
    BadInput,
    CandidateFailed,
    SuiteError,
    UnclassifiedError,
)
from bitnet_crossval.store.constants import BackendRecord
from tests.gguf_models import BOS_ID, spm_vocabulary
from tests.unit.crossval import fake_shim
from tests.unit.crossval.fake_reference import FakeCache, fake_record

pytestmark = pytest.mark.usefixtures("one_blas_thread_here")

PROMPT = "The quick brown fox"
MAX_TOKENS = 4


def crossval(
    ctx: SuiteContext, model: str = "synthetic:llama", candidate: str = "numpy", **changes: Any
) -> CrossvalResult:
    changes.setdefault("prompt", PROMPT)
    changes.setdefault("max_tokens", MAX_TOKENS)
    request = CrossvalRequest(model=parse_model(model), candidate=parse_candidate(candidate), **changes)
    return run_crossval(request, ctx)


def strict_json(document: Any) -> Any:
    """``document`` through JSON text as a strict reader sees it (NaN or Infinity fail)."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"the document holds {constant}, which is not JSON")

    return json.loads(json.dumps(document, allow_nan=False), parse_constant=refuse)


@pytest.fixture
def ctx(fake_cache: FakeCache) -> SuiteContext:
    return fake_cache.context()


def fault_site(ctx: SuiteContext, model: str, fault: str) -> str:
    path = resolve_model(parse_model(model), cache=ctx.cache, env=ctx.env, source_dirs=[])
    site = load_engine(path, EngineOptions(fault=Fault(name=fault))).fault_site()  # type: ignore[arg-type]
    assert site is not None
    return site.key


# --- parity ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "precision"),
    [
        ("synthetic:llama", "float"),
        ("synthetic:gemma3", "float"),
        ("synthetic:bitnet", "float"),
        ("synthetic:llama:Q4_0", "quantized"),
    ],
)
def test_the_numpy_engine_agrees_exactly_with_the_reference(
    ctx: SuiteContext, fake_cache: FakeCache, model: str, precision: str
) -> None:
    result = crossval(ctx, model, trace=True)

    assert result.verdict == "parity" and result.passed
    assert result.summary is not None and result.summary.first_failure is None
    assert result.n_prompt + MAX_TOKENS == len(result.tokens) == len(result.rows) == len(result.pieces)
    assert result.tokens[0] == BOS_ID  # the vocabulary adds BOS, and add_bos follows it
    assert all(row.passed and row.kl == 0.0 and row.top1_agree for row in result.rows)
    assert result.trace is None  # nothing diverged, so nothing was traced
    assert result.model["precision"] == precision
    # The NumPy engine dequantises as the float copy is made: it follows the copy, at the float limit.
    assert result.thresholds.kl_max == DEFAULT_KL_MAX_FLOAT
    assert result.references is not None
    assert result.references.followed == ("native" if precision == "float" else "dequantized")
    assert result.references.references == (("native",) if precision == "float" else ("native", "dequantized"))
    assert result.model["architecture"] == model.split(":")[1]
    assert result.reference["shim"] == str(fake_cache.shim.script)
    assert result.reference["commit"] == fake_shim.BACKEND_COMMIT
    assert result.reference["settings"]["generated"] == MAX_TOKENS
    assert (result.reference["settings"]["kv_type_k"], result.reference["settings"]["kv_type_v"]) == ("f32", "f32")
    assert result.candidate["label"] == "numpy" and result.candidate["details"]["fault"] is None


def test_a_backend_that_refuses_an_f32_v_cache_is_followed_by_the_numpy_candidate(fake_cache: FakeCache) -> None:
    """The 2024 fork runs with F32 K / F16 V; the numpy candidate rounds as it does and agrees."""
    result = crossval(fake_cache.context(FAKE_SHIM_KV="fork"))

    assert result.verdict == "parity"
    settings = result.reference["settings"]
    assert (settings["kv_type_k"], settings["kv_type_v"]) == ("f32", "f16")
    assert "f32 K / f32 V refused" in settings["kv_fallback"]
    assert result.candidate["details"]["kv_cache"] == "f16"


# --- divergence ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "candidate", "first"),
    [
        # RoPE is the identity at position 0, so the wrong variant shows from position 1.
        ("synthetic:llama", "numpy:rope_type", 1),
        # A window of 12 instead of 6 changes only what position 6 and later see.
        ("synthetic:gemma3", "numpy:sliding_window", 6),
    ],
)
def test_a_faulty_candidate_diverges_first_where_its_fault_shows(
    ctx: SuiteContext, model: str, candidate: str, first: int
) -> None:
    result = crossval(ctx, model, candidate, max_tokens=8)

    assert result.verdict == "divergence" and not result.passed
    assert result.summary is not None
    assert result.summary.first_failure == first == result.summary.failed_positions[0]
    assert all(row.passed for row in result.rows[:first])
    failing = result.rows[first]
    assert not failing.passed and failing.reasons and failing.kl > result.thresholds.kl_max
    sentence = result.failure_sentence()
    assert f"first at position {first} (" in sentence and "\n" not in sentence
    assert result.next_step().startswith("rerun with --trace")
    assert result.trace is None
    assert result.candidate["details"]["fault"]["name"] == candidate.split(":")[1]


@pytest.mark.parametrize(
    ("model", "fault"),
    [
        ("synthetic:llama", "gqa_mapping"),
        ("synthetic:bitnet", "missing_sub_norm"),
    ],
)
def test_trace_stops_at_the_fault_site(ctx: SuiteContext, model: str, fault: str) -> None:
    """What the trace comparison holds (every fault on every architecture: test_selfcheck_flow.py)."""
    result = crossval(ctx, model, f"numpy:{fault}", trace=True)

    assert result.verdict == "divergence" and result.summary is not None and result.trace is not None
    first = result.summary.first_failure
    assert first is not None
    comparison = result.trace
    expected = fault_site(ctx, model, fault)
    assert comparison.first_departure is not None and comparison.first_departure.name == expected
    assert comparison.positions == list(range(first + 1))
    assert comparison.compared[-1] is comparison.first_departure
    assert all(c.agrees for c in comparison.compared[:-1])
    if len(comparison.compared) > 1:
        assert comparison.last_agreement is comparison.compared[-2]
    # the fake's trace and the engine's recorder name the same tensors, in the same layouts
    assert comparison.missing_in_candidate == [] and comparison.only_in_candidate == []
    assert all(c.layout == "as is" for c in comparison.compared)
    assert f"{expected} (" in result.failure_sentence()
    assert result.next_step() == (
        f"look at how the candidate computes {expected} ({comparison.first_departure.op}): the tensors before it agree"
    )


@pytest.mark.parametrize(
    ("changes", "first_name", "kept"),
    [
        # layer 1 only: the first tensor traced departs already (layer 0 changed its input)
        ({"trace_layers": (1, 1)}, "attn_norm-1", lambda name: name.endswith("-1")),
        ({"trace_names": "ffn_.*"}, "ffn_inp-0", lambda name: name.startswith("ffn_")),
    ],
    ids=["layers", "names"],
)
def test_trace_filters_narrow_both_sides(
    ctx: SuiteContext, changes: dict[str, Any], first_name: str, kept: Any
) -> None:
    result = crossval(ctx, "synthetic:llama", "numpy:norm_eps", trace=True, **changes)

    comparison = result.trace
    assert comparison is not None and comparison.first_departure is not None
    assert comparison.first_departure.name == first_name
    assert comparison.compared and all(kept(c.name) for c in comparison.compared)
    assert comparison.missing_in_candidate == [] and comparison.only_in_candidate == []
    if "trace_layers" in changes:
        assert comparison.last_agreement is None
        assert "the first tensor traced; widen --trace-layers" in result.next_step()


# --- the tokenizer ---------------------------------------------------------------------------------


def write_tokenizer(path: Path, words: dict[str, int]) -> Path:
    """A Hugging Face tokenizer.json: SentencePiece's ▁ before each word, word-level ids, BOS first."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors

    tokenizer = tokenizers.Tokenizer(models.WordLevel({**words, "<unk>": 0, "<s>": BOS_ID}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    tokenizer.save(str(path))
    return path


def vocab_id(piece: str) -> int:
    return spm_vocabulary()[0].index(piece)


@pytest.mark.parametrize("agrees", [True, False], ids=["agrees", "disagrees"])
def test_a_tokenizer_json_that_disagrees_is_its_own_verdict_before_any_logits(
    fake_cache: FakeCache, tmp_path: Path, agrees: bool
) -> None:
    world = vocab_id("▁world") if agrees else vocab_id("▁the")
    tokenizer = write_tokenizer(tmp_path / "tokenizer.json", {"▁hello": vocab_id("▁hello"), "▁world": world})
    # A reference that evaluated anything would fail: the verdict must come before that.
    ctx = fake_cache.context(FAKE_SHIM_MISBEHAVE="" if agrees else "generate:exit5,logits:exit5")

    result = crossval(ctx, prompt="hello world", tokenizer=tokenizer)

    expected = [BOS_ID, vocab_id("▁hello"), vocab_id("▁world")]
    assert result.tokens[:3] == expected and result.n_prompt == 3
    assert result.reference["tokenization"]["tokenizer_json"] == str(tokenizer)
    if agrees:
        assert result.verdict == "parity" and result.token_mismatch is None
        return
    assert result.verdict == "token-mismatch" and not result.passed
    mismatch = result.token_mismatch
    assert mismatch is not None and mismatch.first_index == 2
    assert list(mismatch.reference) == expected and list(mismatch.candidate) == [*expected[:2], vocab_id("▁the")]
    assert result.rows == [] and result.summary is None
    assert "token index 2" in result.failure_sentence()
    assert "tokenizer" in result.next_step()
    document = strict_json(result.to_json())
    assert document["verdict"] == "token-mismatch" and document["token_mismatch"]["first_index"] == 2
    assert document["summary"] is None and document["rows"] == []


# --- the reference fails ---------------------------------------------------------------------------

REFERENCE_FAILURES = [
    pytest.param("info:exit3", {}, BadInput, "the model cannot be loaded: ", id="info-exit-3"),
    pytest.param("tokenize:exit2", {}, BadInput, "the reference shim rejected its input: ", id="tokenize-exit-2"),
    pytest.param("generate:exit4", {}, BadInput, "the backend does not support this model: ", id="generate-exit-4"),
    pytest.param("logits:exit5", {}, UnclassifiedError, "llama.cpp failed to evaluate the model: ", id="logits-exit-5"),
    pytest.param(
        "generate:exit1", {}, UnclassifiedError, "`bitnet-shim generate` failed (exit 1): ", id="generate-exit-1"
    ),
    pytest.param(
        "trace:exit2",
        {"candidate": "numpy:norm_eps", "trace": True},
        BadInput,
        "the reference shim rejected its input: ",
        id="trace-exit-2",
    ),
    pytest.param(
        "logits:signal9", {}, UnclassifiedError, "`bitnet-shim logits` was killed by signal 9", id="logits-killed"
    ),
    pytest.param(
        "generate:signal11", {}, UnclassifiedError, "`bitnet-shim generate` was killed by signal 11", id="crashed"
    ),
    pytest.param(
        "info:no-json",
        {},
        UnclassifiedError,
        "`bitnet-shim info` succeeded but printed no JSON document",
        id="info-no-json",
    ),
    pytest.param(
        "logits:wrong-shape", {}, UnclassifiedError, "the shim wrote a float32 array of shape", id="logits-shape"
    ),
    pytest.param(
        "generate:wrong-shape", {}, UnclassifiedError, "the shim wrote a float32 array of shape", id="generate-shape"
    ),
    pytest.param(
        "trace:wrong-shape",
        {"candidate": "numpy:norm_eps", "trace": True},
        UnclassifiedError,
        # position 0 fails, so one row of embd ([n_tokens, n_embd]) is traced
        r"/\S+/reference-trace/embd\.npy holds a float32 array of shape \(1, 257\), "
        r"the manifest says float32 \(1, 256\)$",
        id="trace-shape",
    ),
]


@pytest.mark.parametrize(("misbehaviour", "changes", "error", "start"), REFERENCE_FAILURES)
def test_a_failing_reference_is_one_classified_sentence(
    fake_cache: FakeCache, misbehaviour: str, changes: dict[str, Any], error: type[SuiteError], start: str
) -> None:
    """``start``: how the sentence starts (a regular expression where it holds a path)."""
    ctx = fake_cache.context(FAKE_SHIM_MISBEHAVE=misbehaviour)
    if misbehaviour.startswith("info:"):
        # What `info` said of this shim and model is remembered from the session's earlier runs.
        for record in ctx.cache.checks.glob("model-*.json"):
            record.unlink()
    with pytest.raises(SuiteError) as raised:
        crossval(ctx, **changes)

    exc = raised.value
    assert type(exc) is error
    assert exc.exit_code == {BadInput: 6, UnclassifiedError: 1}[error]
    assert exc.message.startswith(start) or re.match(start, exc.message), exc.message
    assert "\n" not in exc.message and exc.next_step
    mode = misbehaviour.split(":")[1]
    if mode.startswith("exit"):
        # the shim's own line is in the sentence, and its log (kept per call) is named
        assert fake_shim.FORCED_MESSAGES[int(mode[4:])] in exc.message
        assert exc.log_path is not None and exc.log_path.is_file()
        assert "error: " in exc.log_path.read_text(encoding="utf-8")
    if mode == "wrong-shape" and "trace" not in misbehaviour:
        n_vocab = len(spm_vocabulary()[0])
        assert f", {n_vocab + 1}), expected float32 (" in exc.message and f", {n_vocab})" in exc.message
    assert [line for line in exc.render().splitlines() if line.startswith("error:")] == [f"error: {exc.message}"]


def test_a_reference_whose_logits_are_not_finite_judges_nothing(fake_cache: FakeCache, tmp_path: Path) -> None:
    """An infinite logit where both sides' top-1 is makes the KL there NaN: that is no agreement,
    and no candidate is even run against it."""
    ids = tmp_path / "ids.txt"
    ids.write_text("1 300 301 302\n", encoding="utf-8")
    ctx = fake_cache.context(FAKE_SHIM_MISBEHAVE="logits:inf-logit")

    result = crossval(ctx, tokens_file=ids, max_tokens=0)

    assert result.verdict == "non-finite" and not result.passed
    assert result.non_finite is not None and result.non_finite.side == "reference"
    assert result.non_finite.positions == [3] and result.non_finite.counts.pos_inf == 1
    assert result.non_finite.exit_code == 6 and result.rows == [] and result.summary is None
    assert result.failure_sentence() == (
        "the logits of the reference hold +inf at position 3, so they cannot judge a candidate; "
        "the model's weights are all finite"
    )
    assert "rerun with --trace" in result.next_step()
    assert strict_json(result.to_json())["non_finite"]["side"] == "reference"


def test_a_context_the_backend_refuses_is_named_with_its_reason(fake_cache: FakeCache) -> None:
    with pytest.raises(UnclassifiedError) as raised:
        crossval(fake_cache.context(FAKE_SHIM_KV="fork"), kv_type="f32")

    assert raised.value.message.startswith("llama.cpp refused to create a context: ")
    assert "V cache quantization requires flash_attn" in raised.value.message
    assert "kv_type='auto'" in raised.value.next_step


@pytest.mark.parametrize("broken", ["changed", "unlisted"])
def test_a_shim_that_is_not_the_one_built_is_not_used(fake_cache: FakeCache, tmp_path: Path, broken: str) -> None:
    if broken == "changed":
        record = fake_record(fake_cache.shim.script, sha256="0" * 64)
    else:
        record = BackendRecord(available=False, reason="no llama.cpp install was found")
    with pytest.raises(BackendUnavailable) as raised:
        crossval(fake_cache.with_constants(tmp_path, record))

    message = raised.value.message
    assert message.startswith("there is no usable shim for the llama backend: ")
    expected = "is not the file that was built" if broken == "changed" else "the constants file does not list it"
    assert expected in message
    assert "invoke preflight --backend llama --repair auto" in raised.value.next_step


# --- bad input found by the flow -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"prompt": ""}, "the prompt is empty"),
        ({"max_tokens": 600}, "more than the context of 512"),
        ({"tokens_file": "ids"}, "holds token id 99999, outside the model's vocabulary"),
    ],
    ids=["empty-prompt", "past-the-context", "id-outside-the-vocabulary"],
)
def test_bad_input_is_found_before_anything_is_evaluated(
    fake_cache: FakeCache, tmp_path: Path, changes: dict[str, Any], fragment: str
) -> None:
    if changes.get("tokens_file") == "ids":
        ids = tmp_path / "ids.txt"
        ids.write_text("1 5 99999\n", encoding="utf-8")
        changes["tokens_file"] = ids
    # Evaluating anything would fail differently: the input must be refused first.
    ctx = fake_cache.context(FAKE_SHIM_MISBEHAVE="generate:exit5,logits:exit5")
    with pytest.raises(BadInput) as raised:
        crossval(ctx, **changes)
    assert fragment in raised.value.message
    assert raised.value.exit_code == 6


# --- the candidate fails ---------------------------------------------------------------------------


def crashing_candidate(model: str, tokens: Any) -> Any:
    raise RuntimeError("the candidate's own bug")


def square_candidate(model: str, tokens: Any) -> Any:
    import numpy as np

    return np.zeros((len(tokens), len(tokens)), dtype=np.float32)


@pytest.mark.parametrize(
    ("candidate", "fragment"),
    [
        (f"py:{__name__}:crashing_candidate", "RuntimeError"),
        (f"py:{__name__}:square_candidate", "returned shape ["),
        (f"cmd:{sys.executable} -S -c 'raise SystemExit(3)'", "3"),
    ],
    ids=["py-raises", "py-wrong-shape", "cmd-exit-3"],
)
def test_a_candidate_that_fails_is_exit_11(ctx: SuiteContext, candidate: str, fragment: str) -> None:
    with pytest.raises(CandidateFailed) as raised:
        crossval(ctx, candidate=candidate)

    assert raised.value.exit_code == 11
    assert fragment in raised.value.message and "\n" not in raised.value.message


# --- thresholds ------------------------------------------------------------------------------------


def test_kl_max_and_tie_margin_are_what_the_verdict_applies(ctx: SuiteContext) -> None:
    default = crossval(ctx, candidate="numpy:rope_type", max_tokens=8)
    assert default.summary is not None and default.summary.first_failure == 1
    kls = [row.kl for row in default.rows]

    # Tolerant enough for every position: parity, with the thresholds reported as given.
    wide = crossval(ctx, candidate="numpy:rope_type", max_tokens=8, kl_max=max(kls) * 2, tie_margin=1e6)
    assert wide.verdict == "parity"
    assert (wide.thresholds.kl_max, wide.thresholds.tie_margin) == (max(kls) * 2, 1e6)

    # A KL bound between the positions' values: exactly those above it fail.
    bound = sorted(kls)[len(kls) // 2]
    middle = crossval(ctx, candidate="numpy:rope_type", max_tokens=8, kl_max=bound, tie_margin=1e6)
    assert [row.kl for row in middle.rows] == kls
    assert [row.passed for row in middle.rows] == [kl <= bound for kl in kls]
    assert middle.summary is not None
    assert middle.summary.first_failure == next(i for i, kl in enumerate(kls) if kl > bound)

    # With no room for a tie, a different top-1 pick fails even under a huge KL bound.
    flips = [row.position for row in default.rows if not row.top1_agree]
    strict_ties = crossval(ctx, candidate="numpy:rope_type", max_tokens=8, kl_max=1e9, tie_margin=0.0)
    assert [row.position for row in strict_ties.rows if not row.passed] == flips


# --- the JSON document -----------------------------------------------------------------------------


def test_the_result_is_strict_json_of_the_documented_shape(ctx: SuiteContext) -> None:
    result = crossval(ctx, candidate="numpy:norm_eps", trace=True)
    document = strict_json(result.to_json())

    assert set(document) == {
        "schema", "version", "verdict", "passed", "model", "reference", "candidate", "tokens", "n_prompt",
        "pieces", "thresholds", "rows", "summary", "token_mismatch", "timings", "trace", "non_finite", "references",
    }  # fmt: skip
    assert (document["schema"], document["version"]) == ("bitnet-crossval/report", 1)
    assert document["verdict"] == "divergence" and document["passed"] is False
    assert len(document["rows"]) == len(document["tokens"]) == len(document["pieces"])
    assert all(isinstance(row["kl"], float) and math.isfinite(row["kl"]) for row in document["rows"])
    assert all(row["kl_max"] == DEFAULT_KL_MAX_FLOAT for row in document["rows"])
    assert document["references"]["followed"] == "native"  # a float model is its own reference
    assert document["references"]["references"] == ["native"]
    assert document["references"]["kl_by_reference"]["native"] == [row["kl"] for row in document["rows"]]
    assert result.summary is not None and document["summary"]["first_failure"] == result.summary.first_failure == 0
    assert document["trace"]["first_departure"]["name"] == "attn_norm-0"
    assert document["reference"]["settings"]["kv_type_v"] == "f32"
    assert document["thresholds"] == {"kl_max": DEFAULT_KL_MAX_FLOAT, "tie_margin": result.thresholds.tie_margin}
    assert all(isinstance(seconds, float) for seconds in document["timings"].values())
