"""The shim against a stub of the 2024 C API (tests/data/legacy_llama_api): the `legacy` branch
compiles and runs, the KV cache falls back where the 2024 fork refuses an F32 V cache, and
`trace`/`quantize` work on that API generation too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import UnclassifiedError
from bitnet_crossval.reference.build import ShimBuild
from bitnet_crossval.reference.client import Shim, run_report
from tests.integration.reference.conftest import run_shim

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FORK_REASON = "llama_new_context_with_model: V cache quantization requires flash_attn"


def test_2024_header_selects_legacy_api_and_runs_causally(
    legacy_build: ShimBuild, legacy: Shim, tiny_model: Path
) -> None:
    assert legacy_build.api == "legacy"
    info = legacy.info(tiny_model)
    assert info["api"] == "legacy"
    assert info["api_features"] == {
        "flash_attn_control": "flash_attn",
        "memory_clear": "llama_kv_cache_clear",
        "logits_all_param": True,
        "context_seed_param": False,  # the 2024 fork's llama_context_params has no seed
    }
    assert info["architecture"] == "legacy-stub"  # the stub answered, not a real llama.cpp

    # The stub refuses flash attention and returns no rows that were not requested, so this
    # passing means the legacy branch set both up as the current one does.
    tokens = legacy.tokenize(tiny_model, "abc", add_bos=True, parse_special=False).tokens
    full, meta = legacy.logits(tiny_model, tokens)
    prefix, _ = legacy.logits(tiny_model, tokens[:2])
    assert full.shape == (4, info["vocab_size"])
    np.testing.assert_array_equal(prefix, full[:2])
    assert meta["flash_attn"] is False
    assert meta["seed"] is None  # no context seed to set on this API


def test_auto_kv_falls_back_to_an_f16_v_cache_and_says_why(legacy: Shim, tiny_model: Path) -> None:
    logits, meta = legacy.logits(tiny_model, [1, 70, 71, 72])
    run = run_report(meta)
    assert (run.kv_type_requested, run.kv_type_k, run.kv_type_v) == ("auto", "f32", "f16")
    assert meta["kv_type"] == "mixed"
    assert run.kv_fallback is not None
    assert FORK_REASON in run.kv_fallback
    assert np.isfinite(logits).all()

    generation = legacy.generate(tiny_model, [1, 70], n=3)
    assert run_report(generation.metadata).kv_type_v == "f16"

    _, f16 = legacy.logits(tiny_model, [1, 70], kv_type="f16")
    assert (f16["kv_type"], f16["kv_fallback"]) == ("f16", None)


def test_an_explicit_f32_kv_cache_fails_with_exit_5_and_the_forks_reason(
    legacy: Shim, legacy_build: ShimBuild, tiny_model: Path, tmp_path: Path, shim_env: dict[str, str]
) -> None:
    out = tmp_path / "logits.npy"
    result = run_shim(
        legacy_build.executable, "logits", "--model", str(tiny_model), "--tokens", "1,70",
        "--out", str(out), "--kv-type", "f32", env=shim_env,
    )  # fmt: skip
    assert result.returncode == 5
    (line,) = result.stderr.splitlines()
    assert line.startswith("bitnet-shim: error: llama.cpp could not create a context with an f32 K / f32 V cache")
    assert FORK_REASON in line
    assert not out.exists()

    with pytest.raises(UnclassifiedError) as caught:
        legacy.logits(tiny_model, [1, 70], kv_type="f32")
    assert FORK_REASON in caught.value.message
    assert "kv_type='auto'" in caught.value.next_step


def test_trace_runs_on_the_2024_api(legacy: Shim, tiny_model: Path, tmp_path: Path) -> None:
    # Two tokens as the stub has two heads: the attention scores kq-0 [n, n, heads] look
    # token-first by shape alone, and must still be recognised as not.
    trace = legacy.trace(tiny_model, [1, 70], out_dir=tmp_path / "trace")
    assert trace.names == (
        "inp_embd",
        "attn_norm-0",
        "Qcur-0",
        "Vcur-0",
        "kqv_out-0",
        "l_out-0",
        "result_norm",
        "result_output",
    )
    assert trace.skipped == {"token_axis_inner": ("kq-0",)}
    q = trace.tensor("Qcur-0")
    assert (q.op, q.n_nodes, q.ops, q.shape) == ("RESHAPE", 2, ("MUL_MAT", "RESHAPE"), (2, 2, 4))
    assert [t.source_type for t in trace.tensors if t.name in ("Vcur-0", "l_out-0")] == ["f16", "bf16"]
    assert trace.run.kv_type_v == "f16"  # the same fallback as logits

    # The stub's kqv_out-0 is a strided view of [Qcur | -2 Qcur] + position: the shim must
    # follow the strides.
    kqv = trace.array("kqv_out-0")
    expected = np.asarray(q.load()).reshape(2, 8) + np.arange(2, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(kqv, expected)
    np.testing.assert_array_equal(trace.array("result_output"), trace.logits())
    logits, _ = legacy.logits(tiny_model, [1, 70])
    np.testing.assert_array_equal(trace.logits(), logits)
    manifest = json.loads((tmp_path / "trace" / "trace.json").read_text())
    assert manifest["api"] == "legacy"


def test_quantize_is_plumbed_through_on_the_2024_api(legacy: Shim, tiny_model: Path, tmp_path: Path) -> None:
    info = legacy.info()
    assert "I2_S" in info["quantize_types"]  # the fork's own type, found by a CMake probe
    assert "TQ1_0" not in info["quantize_types"]  # the stub's header does not declare it
    out = tmp_path / "copy.gguf"
    result = legacy.quantize(tiny_model, out, "Q4_K_M")  # the stub's quantiser copies the file
    assert out.read_bytes() == tiny_model.read_bytes()
    assert result.size_bytes == tiny_model.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.gguf"]  # no temporary left
