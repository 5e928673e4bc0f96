"""`--reference` on a quantised model against the real llama.cpp: which reference a candidate
follows, and the limit it is judged at.

- the NumPy engine computes in float: it follows the float copy and is parity at the float limit;
- llama.cpp itself as the candidate (the same arithmetic, rounding included) follows the model as
  given and is parity at the per-position limits;
- an engine fault still fails; a bug small enough to pass the quantised limit against the model
  as given does not pass against the float copy;
- the self-check on quantised synthetic models: every fault caught and located against the float
  copy;
- the real Gemma 3 270M Q4_K_M at the defaults (slow).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.helpers import run_invoke
from tests.integration.crossval.conftest import CrossvalCache, assert_one_error, strict_json

pytestmark = pytest.mark.integration

MODEL = "synthetic:llama:Q4_0"
FLOAT_KL, QUANTISED_KL, NOISE_FACTOR = 0.002, 0.1, 4.0
SMALL_BUG = "py:tests.integration.crossval.candidate_fns:slightly_wrong_rope_base"
ISSUE_PROMPT = "The quick brown fox jumps over the lazy dog because it wants to reach the river before"


def _run(cache: CrossvalCache, *args: str, timeout: float = 300) -> tuple[Any, dict[str, Any]]:
    result = cache.run("--model", MODEL, *args, "--format", "json", timeout=timeout)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result, strict_json(result.stdout)


def _distances(doc: dict[str, Any]) -> str:
    refs = doc["references"]
    return ", ".join(f"{name} mean {d['mean_kl']:.3g} max {d['max_kl']:.3g}" for name, d in refs["distances"].items())


def test_the_numpy_engine_follows_the_float_copy_and_is_parity(crossval_cache: CrossvalCache) -> None:
    result, doc = _run(crossval_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    refs = doc["references"]
    assert doc["verdict"] == "parity"
    assert refs["mode"] == "auto" and refs["references"] == ["native", "dequantized"]
    assert refs["followed"] == "dequantized"
    near, far = refs["distances"]["dequantized"], refs["distances"]["native"]
    assert near["mean_kl"] < 1e-6 < far["mean_kl"]  # the float copy, not the rounding of the activations
    assert doc["thresholds"]["kl_max"] == FLOAT_KL
    assert all(row["kl_max"] == FLOAT_KL and row["passed"] for row in doc["rows"])
    assert refs["kl_max_per_position"] is None
    copy = refs["float_copy"]
    assert copy["float_type"] == "F32" and copy["dequantized_by_backend"] > 0
    assert doc["reference"]["float_copy"]["path"] == copy["path"]
    assert "reference: dequantized (its float copy (F32))" in result.stderr
    print(f"\nnumpy on {MODEL}: {_distances(doc)}")


def test_llama_cpp_as_the_candidate_follows_the_model_as_given(crossval_cache: CrossvalCache) -> None:
    result, doc = _run(crossval_cache, "--candidate", "llama")
    assert result.returncode == 0, result.stderr[-3000:]
    refs = doc["references"]
    assert doc["verdict"] == "parity" and refs["followed"] == "native"
    assert refs["distances"]["native"]["mean_kl"] == 0.0 < refs["distances"]["dequantized"]["mean_kl"]
    limits, noise = refs["kl_max_per_position"], refs["noise"]
    assert len(limits) == len(noise) == len(doc["rows"])
    assert limits == pytest.approx([FLOAT_KL + NOISE_FACTOR * n for n in noise])
    assert [row["kl_max"] for row in doc["rows"]] == limits
    assert all(n >= 0.0 for n in noise) and max(noise) > 0.0
    assert "KL limit" in result.stderr  # the column of the per-position limits
    print(f"\nllama on {MODEL}: {_distances(doc)}; limits {min(limits):.3g}..{max(limits):.3g}")


def test_an_engine_fault_still_fails(crossval_cache: CrossvalCache) -> None:
    result, doc = _run(crossval_cache, "--candidate", "numpy:norm_eps")
    assert_one_error(result, 10, "parity failed", "first at position 0")
    assert doc["verdict"] == "divergence"
    assert math.isfinite(doc["references"]["distances"]["native"]["mean_kl"])


def test_a_small_bug_passes_the_quantised_limit_but_not_the_float_copy(crossval_cache: CrossvalCache) -> None:
    # Against the model as given at the quantised limit (--reference native), the bug is hidden.
    native, native_doc = _run(crossval_cache, "--candidate", SMALL_BUG, "--reference", "native")
    assert native.returncode == 0, native.stderr[-3000:]
    assert native_doc["references"]["references"] == ["native"]
    assert native_doc["thresholds"]["kl_max"] == QUANTISED_KL
    # With both references, it follows the float copy (it computes in float) and fails there.
    auto, auto_doc = _run(crossval_cache, "--candidate", SMALL_BUG)
    assert_one_error(auto, 10, "parity failed")
    assert auto_doc["references"]["followed"] == "dequantized"
    assert auto_doc["tokens"] == native_doc["tokens"]  # the same ids, whichever reference judges
    print(f"\nrope base 10% off: {_distances(auto_doc)}")


def test_asked_for_the_float_copy_llama_cpp_itself_fails(crossval_cache: CrossvalCache) -> None:
    # llama.cpp's own rounding of the activations is further from the float copy than a float engine may be.
    result, doc = _run(crossval_cache, "--candidate", "llama", "--reference", "dequantized")
    assert_one_error(result, 10, "parity failed")
    refs = doc["references"]
    assert refs["followed"] == "dequantized" and refs["why"] == "as asked"
    assert doc["thresholds"]["kl_max"] == FLOAT_KL


def test_a_float_model_accepts_the_option_and_has_one_reference(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run("--model", "synthetic:llama", "--reference", "dequantized", "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    refs = strict_json(result.stdout)["references"]
    assert refs["references"] == ["native"] and refs["followed"] == "native"
    assert refs["float_copy"] is None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_gemma3_270m_at_the_defaults_follows_the_float_copy(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(
        "--model", "gemma3-270m", "--prompt", ISSUE_PROMPT, "--max-tokens", "16", "--format", "json", timeout=1800
    )
    assert "Traceback" not in result.stderr
    doc = strict_json(result.stdout)
    print(f"\nGemma 3 270M Q4_K_M, the numpy engine: {doc['verdict']}; {_distances(doc)}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert doc["verdict"] == "parity" and doc["model"]["precision"] == "quantized"
    refs = doc["references"]
    assert refs["followed"] == "dequantized" and doc["thresholds"]["kl_max"] == FLOAT_KL
    assert refs["distances"]["dequantized"]["max_kl"] < FLOAT_KL


def _tensor_types(cache: CrossvalCache, pattern: str) -> set[str]:
    """The tensor types of the one cached model whose name matches ``pattern``."""
    import gguf

    (path,) = (cache.root / "models").glob(pattern)
    return {tensor.tensor_type.name for tensor in gguf.GGUFReader(path).tensors}


@pytest.mark.parametrize(
    ("arch", "weights"),
    # Q4_K: llama.cpp's quantiser makes it from the F32 synthetic model (its Q4_K_M mix).
    [("llama", "Q4_0"), ("bitnet", "TQ2_0"), ("gemma3", "Q8_0"), ("llama", "Q4_K"), ("gemma3", "Q4_K")],
)
def test_the_selfcheck_catches_and_locates_every_fault_on_quantised_weights(
    crossval_cache: CrossvalCache, arch: str, weights: str
) -> None:
    result = run_invoke(
        ["crossval-selfcheck", "--repair", "never", "--arch", arch, "--weights", weights, "--format", "json"],
        env=crossval_cache.env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cases = strict_json(result.stdout)["cases"]
    assert len(cases) > 1 and cases[0]["fault"] is None and cases[0]["verdict"] == "parity"
    not_ok = [(c["fault"], c["verdict"], c["expected_site"], c["found_site"]) for c in cases if not c["ok"]]
    assert not_ok == []
    if weights == "Q4_K":
        assert "Q4_K" in _tensor_types(crossval_cache, f"synthetic-{arch}-q4_k-*.gguf")
    print(
        f"\n{arch} {weights}: " + ", ".join(f"{c['fault']} {c['kl_at_first_failure']:.3g}" for c in cases if c["fault"])
    )


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_the_selfcheck_accepts_gemma3_270m(crossval_cache: CrossvalCache) -> None:
    result = run_invoke(
        ["crossval-selfcheck", "--repair", "never", "--model", "gemma3-270m", "--format", "json"],
        env=crossval_cache.env,
        timeout=7000,
    )
    assert "Traceback" not in result.stderr
    document = strict_json(result.stdout)
    cases = document["cases"]
    assert {c["architecture"] for c in cases} == {"gemma3"}
    assert cases[0]["fault"] is None and cases[0]["ok"]
    # One K/V head: the GQA mapping cannot change anything, and is listed, not run.
    assert [c["fault"] for c in cases if not c["applies"]] == ["gqa_mapping"]
    # Every other fault is caught and traced to the tensor it first changes; the sliding window
    # (512) too, on a run of the prompt set just past it.
    failed = [(c["fault"], c["verdict"], c["expected_site"], c["found_site"]) for c in cases if not c["ok"]]
    assert failed == [], failed
    window = next(c for c in cases if c["fault"] == "sliding_window")
    assert window["first_failure"] is not None and window["first_failure"] >= 512, window
    assert result.returncode == 0, result.stderr
    print("\n" + ", ".join(f"{c['fault']} {c['found_site']} {c['seconds']:.0f}s" for c in cases if c["applies"]))
