"""An architecture registered from outside the library reaches parity with the real llama.cpp.

``qwen2`` (tests/qwen2_architecture.py: one module, no edit to the library) is registered for
this module. Its synthetic model, written by the suite, is run by the real pinned llama.cpp
through the shim and by the NumPy engine: the logits agree within the bands of the shipped
architectures, the trace has llama.cpp's names in llama.cpp's order with the same values, and
through ``run_crossval`` (as ``--model synthetic:qwen2`` runs) the engine as it is gets
parity while every fault the toy lists, its own ``missing_qkv_bias`` included, is caught and
located at the tensor ``fault_site`` names (the self-check, in this process).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.backends.specs import LLAMA
from bitnet_crossval.context import SuiteContext, load_context
from bitnet_crossval.crossval import CrossvalRequest, parse_candidate, parse_model, run_crossval
from bitnet_crossval.crossval.engine import EngineOptions, Fault, FaultName, TraceRecorder, load_engine, register
from bitnet_crossval.crossval.engine import unregister as unregister_architecture
from bitnet_crossval.crossval.models import resolve_model
from bitnet_crossval.crossval.selfcheck import cases_for, run_selfcheck
from bitnet_crossval.reference.client import Shim
from tests import qwen2_architecture
from tests.integration.crossval.test_engine_parity import BANDS, parity, reference_logits, rel, sequence
from tests.shim_cache import cache_env_with_shim

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

VOCAB_NAME = "ggml-vocab-llama-spm.gguf"
TYPES = ("F32", "F16", "Q8_0", "Q4_0")


@pytest.fixture(scope="module", autouse=True)
def qwen2() -> Iterator[None]:
    register(qwen2_architecture)
    try:
        yield
    finally:
        unregister_architecture(qwen2_architecture.NAME)


@pytest.fixture(scope="module")
def ctx(
    tmp_path_factory: pytest.TempPathFactory, llama_install: Path, llama_source: Path, llama_shim: Shim
) -> SuiteContext:
    """A cache as `invoke rebuild` leaves it, with the session's shim, and llama.cpp's vocabulary."""
    root = tmp_path_factory.mktemp("registered-arch") / "cache"
    vocab = root / "sources" / "llama-vocab" / "models" / VOCAB_NAME
    vocab.parent.mkdir(parents=True)
    shutil.copyfile(llama_source / "models" / VOCAB_NAME, vocab)
    return load_context(cache_env_with_shim(root, LLAMA, llama_install, llama_shim))


def toy_model(ctx: SuiteContext, tensor_type: str = "F32") -> Path:
    return resolve_model(parse_model(f"synthetic:qwen2:{tensor_type}"), cache=ctx.cache, env=ctx.env, source_dirs=[])


@pytest.mark.parametrize("tensor_type", TYPES)
def test_the_toy_matches_llama_cpp(ctx: SuiteContext, llama_shim: Shim, tensor_type: str) -> None:
    model = toy_model(ctx, tensor_type)
    tokens = sequence(llama_shim, model)
    ref = reference_logits(llama_shim, model, tokens)
    plain = parity(ref, load_engine(model).forward(tokens))
    print(f"\nqwen2 {tensor_type} ({len(tokens)} positions): {plain.line()}")
    band = BANDS[tensor_type]
    assert plain.nmse_max < band.nmse
    assert plain.kl_mean < band.kl
    assert plain.worst_tie_gap <= band.tie


def test_the_toys_trace_has_llama_cpps_names_order_and_values(
    ctx: SuiteContext, llama_shim: Shim, tmp_path: Path
) -> None:
    model = toy_model(ctx)
    tokens = sequence(llama_shim, model)
    trace = llama_shim.trace(model, tokens, out_dir=tmp_path / "trace", kv_type="f32")
    recorder = TraceRecorder()
    result = parity(np.array(trace.logits()), load_engine(model).forward(tokens, trace=recorder))
    worst = max(rel(recorder[t.name], t.load()) for t in trace.tensors)
    print(f"\nqwen2 trace: {len(recorder)} tensors, worst relative RMS difference {worst:.2e}; {result.line()}")
    assert recorder.keys() == list(trace.names)
    assert worst < 1e-3


def test_the_toys_own_fault_is_caught_and_located_through_run_crossval(ctx: SuiteContext, tmp_path: Path) -> None:
    request = CrossvalRequest(
        model=parse_model("synthetic:qwen2"), candidate=parse_candidate("numpy:missing_qkv_bias"), trace=True
    )
    result = run_crossval(request, ctx, work_dir=tmp_path)
    assert result.verdict == "divergence"
    site = load_engine(toy_model(ctx), EngineOptions(fault=Fault(name=FaultName("missing_qkv_bias")))).fault_site()
    assert site is not None and site.key == "Qcur-0"
    assert result.trace is not None and result.trace.first_departure is not None
    assert result.trace.first_departure.name == site.key
    assert result.trace.missing_in_candidate == [] and result.trace.only_in_candidate == []


def test_the_selfcheck_of_the_toy_passes(ctx: SuiteContext) -> None:
    cases = run_selfcheck(ctx, architectures=("qwen2",), candidates=("numpy",))
    for case in cases:
        label = case.fault or "clean"
        print(f"\nqwen2/{label}: {case.verdict}, expected {case.expected_site}, traced {case.found_site}")
    assert [case.fault for case in cases] == cases_for("qwen2")
    assert "missing_qkv_bias" in [case.fault for case in cases]
    assert all(case.ok for case in cases), [case.to_json() for case in cases if not case.ok]
    assert cases[0].fault is None and cases[0].verdict == "parity"
