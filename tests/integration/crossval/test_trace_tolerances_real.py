"""The trace's judgement against the real pinned llama.cpp: ``invoke crossval-per-token --trace``
with the NumPy engine's deliberate faults names the tensor each fault first changes, at the
tolerances of ``crossval/trace_tolerance.py``; a correct engine has no departure.

- on the synthetic gemma3 model (F32, and F16 for the faults the F16 tolerances must still see):
  ``attn_scale`` at ``kqv_out-0``, ``norm_eps`` at ``attn_norm-0``, ``rope_base`` at ``Qcur-0``
  (the first roped tensor), ``final_softcap`` at ``result_output`` (judged by the verdict's KL);
  the answer names the first and the worst position (text and JSON) and gives no advice to widen
  the filters, none being set;
- slow: the same on the F32 float copy of Gemma 3 270M (Q4_K_M dequantised by llama.cpp), where a
  correct engine has parity and the faults are located at layer 0 or at the logits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval import parse_model
from bitnet_crossval.crossval.candidates.base import TraceRequest
from bitnet_crossval.crossval.candidates.numpy_engine import NumpyCandidate
from bitnet_crossval.crossval.engine import EngineOptions, GGUFModelFile
from bitnet_crossval.crossval.models import resolve_model
from bitnet_crossval.crossval.trace import RefTensor, TraceComparison, compare_traces
from bitnet_crossval.crossval.trace_tolerance import trace_precision
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.dequantize import float_copy
from bitnet_crossval.store.constants import read_constants
from bitnet_crossval.store.layout import CacheLayout
from tests.integration.crossval.conftest import CrossvalCache, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

PROMPT = "The quick brown fox jumps over the lazy dog because it wants to reach the river before"
DIVERGENCE = 10  # ParityFailed

FAULT_SITES = {
    "attn_scale": "kqv_out-0",
    "norm_eps": "attn_norm-0",
    "rope_base": "Qcur-0",
    "final_softcap": "result_output",
}


def traced(cache: CrossvalCache, model: str, candidate: str, *extra: str, timeout: float = 600) -> dict[str, Any]:
    result = cache.run(
        "--model", model, "--candidate", candidate, "--prompt", PROMPT, "--max-tokens", "4", "--trace",
        "--format", "json", *extra, timeout=timeout,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    document: dict[str, Any] = strict_json(result.stdout)
    document["exit"] = result.returncode
    return document


def assert_located(document: dict[str, Any], site: str) -> None:
    assert document["exit"] == DIVERGENCE and document["verdict"] == "divergence", document.get("summary")
    trace = document["trace"]
    departure = trace["first_departure"]
    assert departure is not None, trace
    compared = [(t["name"], t["agrees"]) for t in trace["compared"]]
    assert departure["name"] == site, compared
    assert all(agrees for _name, agrees in compared[:-1])
    first, worst = departure["first_position"], departure["worst_position"]
    assert isinstance(first, int) and isinstance(worst, int) and 0 <= first <= worst <= trace["positions"][-1]
    assert trace["filtered"] is False
    if site == "result_output":
        assert departure["judged_by"] == "KL" and departure["max_kl"] > trace["kl_max"]
    else:
        assert departure["judged_by"] == "relative error" and departure["max_rel_error"] > departure["tolerance"]


@pytest.mark.parametrize("fault", sorted(FAULT_SITES))
def test_a_fault_on_the_synthetic_gemma3_is_named_at_its_site(crossval_cache: CrossvalCache, fault: str) -> None:
    document = traced(crossval_cache, "synthetic:gemma3", f"numpy:{fault}")
    assert document["trace"]["precision"] == "F32"
    assert_located(document, FAULT_SITES[fault])


@pytest.mark.parametrize("fault", ["attn_scale", "norm_eps"])
def test_a_fault_on_the_f16_synthetic_gemma3_is_named_at_its_site(crossval_cache: CrossvalCache, fault: str) -> None:
    document = traced(crossval_cache, "synthetic:gemma3:F16", f"numpy:{fault}")
    assert document["trace"]["precision"] == "F16"
    assert_located(document, FAULT_SITES[fault])


def test_the_text_answer_names_the_first_and_worst_position_and_no_filter_advice(
    crossval_cache: CrossvalCache,
) -> None:
    result = crossval_cache.run(
        "--model", "synthetic:gemma3", "--candidate", "numpy:rope_base", "--prompt", PROMPT, "--max-tokens", "4",
        "--trace", timeout=600,
    )  # fmt: skip
    assert result.returncode == DIVERGENCE, result.stderr[-3000:]
    text = result.stdout + result.stderr
    line = next(line for line in text.splitlines() if line.startswith("trace: "))
    assert "Qcur-0 (ROPE) first departs" in line and "position" in line, line
    assert "widen" not in text


def test_a_correct_engine_has_parity_on_the_synthetic_gemma3(crossval_cache: CrossvalCache) -> None:
    document = traced(crossval_cache, "synthetic:gemma3", "numpy")
    assert document["exit"] == 0 and document["verdict"] == "parity" and document["trace"] is None


# --- the float copy of Gemma 3 270M ------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_f32(crossval_cache: CrossvalCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The F32 float copy of Gemma 3 270M Q4_K_M (fetched as `--model gemma3-270m` fetches it),
    written by the cache's llama.cpp."""
    layout = CacheLayout(crossval_cache.root)
    model = resolve_model(parse_model("gemma3-270m"), cache=layout, env=crossval_cache.env, source_dirs=[])
    record = read_constants(crossval_cache.root / "constants.json").record("llama")
    assert record is not None and record.shim
    shim = Shim(Path(record.shim), env=crossval_cache.env, log_dir=tmp_path_factory.mktemp("shim-logs"))
    copy = float_copy(model, shim, cache=layout, threads=os.cpu_count() or 1)
    assert copy.float_type == "F32"
    return copy.path


# Each fault named at its site on Gemma (through its float copy, which --reference auto follows)
# is proved by the self-check on Gemma: tests/integration/crossval/test_reference_modes.py
# (test_the_selfcheck_accepts_gemma3_270m), which runs every fault gemma3 lists.


# --- a correct engine's whole trace, compared tensor by tensor ------------------------------------


def correct_trace(cache: CrossvalCache, model: Path, tmp_path: Path) -> TraceComparison:
    """The shim's trace and the NumPy engine's at every position of the prompt, compared at the
    model's precision (a parity run would not trace: this compares everything)."""
    record = read_constants(cache.root / "constants.json").record("llama")
    assert record is not None and record.shim
    shim = Shim(Path(record.shim), env=cache.env, log_dir=tmp_path / "logs")
    info = shim.info(model)
    tokens = list(shim.tokenize(model, PROMPT, add_bos=bool(info.get("add_bos")), parse_special=False).tokens)
    positions = list(range(len(tokens)))
    reference = shim.trace(model, tokens, out_dir=tmp_path / "reference", positions=positions)
    refs = [RefTensor(name=t.name, layer=t.layer, op=t.op, shape=t.shape, load=t.load) for t in reference.tensors]
    candidate = NumpyCandidate(model, EngineOptions())
    candidate_trace = candidate.trace(
        model, np.asarray(tokens, dtype=np.int32), request=TraceRequest(positions=positions), work_dir=tmp_path
    )
    gguf = GGUFModelFile(model)
    types = {t.type_name for name, t in gguf.tensors.items() if len(t.shape) >= 2 and name.endswith(".weight")}
    return compare_traces(
        refs, candidate_trace, architecture=str(info["architecture"]), positions=positions,
        precision=trace_precision(types),
    )  # fmt: skip


@pytest.mark.parametrize("spec", ["synthetic:gemma3", "synthetic:gemma3:F16", "synthetic:llama"])
def test_a_correct_engine_agrees_at_every_tensor_of_a_synthetic_model(
    crossval_cache: CrossvalCache, tmp_path: Path, spec: str
) -> None:
    env = crossval_cache.env
    model = resolve_model(parse_model(spec), cache=CacheLayout(crossval_cache.root), env=env, source_dirs=[])
    comparison = correct_trace(crossval_cache, model, tmp_path)
    worst = max(comparison.compared, key=lambda t: t.max_rel_error / t.tolerance if t.max_kl is None else 0.0)
    print(f"\n{spec}: worst {worst.name} {worst.max_rel_error:.3g} (tolerance {worst.tolerance:g})")
    assert comparison.first_departure is None, comparison.sentence()
    assert comparison.compared[-1].name == "result_output" and not comparison.missing_in_candidate


@pytest.mark.slow
def test_a_correct_engine_agrees_at_every_tensor_of_the_f32_copy_of_gemma(
    crossval_cache: CrossvalCache, gemma_f32: Path, tmp_path: Path
) -> None:
    comparison = correct_trace(crossval_cache, gemma_f32, tmp_path)
    assert comparison.precision == "F32"
    assert comparison.first_departure is None, comparison.sentence()
    assert len(comparison.compared) > 18 * 10 and comparison.compared[-1].name == "result_output"
