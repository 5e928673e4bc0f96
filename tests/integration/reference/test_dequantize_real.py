"""The float copy made by the real pinned llama.cpp (the shim built from this tree).

What it must be: every quantised tensor dequantised as llama.cpp dequantises it, everything
else the source's bytes; and what it is for: on the copy, llama.cpp and the NumPy engine agree
at float precision, where on the quantised original they do not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bitnet_crossval.crossval.engine import load_engine
from bitnet_crossval.crossval.synthetic import Arch, write_synthetic_model
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.dequantize import (
    FloatCopy,
    backend_identity,
    float_copy,
    quantized_tensors,
    to_float_type,
)
from bitnet_crossval.reference.gguf_container import read_layout
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.files import file_sha256
from tests.helpers import DATA, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WORKER = DATA / "float_copy_worker.py"
HOLDER = DATA / "lock_holder.py"
PROMPT = "The quick brown fox jumps over the lazy dog because it wants to reach the river before"

ModelMaker = Callable[..., Path]


@pytest.fixture(scope="module")
def synthetic_model(spm_vocab: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelMaker:
    directory = tmp_path_factory.mktemp("float-copy-models")
    made: dict[tuple[str, str], Path] = {}

    def make(arch: Arch, tensor_type: str) -> Path:
        if (arch, tensor_type) not in made:
            path = directory / f"{arch}-{tensor_type}.gguf"
            made[arch, tensor_type] = write_synthetic_model(
                path,
                arch=arch,
                tensor_type=tensor_type,
                vocab=spm_vocab,
            )
        return made[arch, tensor_type]

    return make


def kl_per_position(ref: npt.NDArray[np.float32], cand: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """KL(P_ref || P_cand) of every row, in float64."""
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    log_p = r - np.logaddexp.reduce(r, axis=-1, keepdims=True)
    log_q = c - np.logaddexp.reduce(c, axis=-1, keepdims=True)
    return np.asarray((np.exp(log_p) * (log_p - log_q)).sum(axis=-1))


def assert_is_the_backends_float_copy(model: Path, copy: FloatCopy) -> None:
    """Metadata bytes, tensor order and plain tensors as in ``model``; quantised tensors float,
    holding ggml's dequantisation (gguf-py's, which agrees with it bit for bit on these types)."""
    import gguf
    from gguf.quants import dequantize

    source, written = read_layout(model), read_layout(copy.path)
    assert written.kv_bytes() == source.kv_bytes()
    assert [(t.name, t.ne) for t in written.tensors] == [(t.name, t.ne) for t in source.tensors]
    quantized = set(quantized_tensors(model))
    assert copy.by_backend == len(quantized) > 0
    before = {t.name: t for t in gguf.GGUFReader(model).tensors}
    after = {t.name: t for t in gguf.GGUFReader(copy.path).tensors}
    for name, tensor in before.items():
        raw = np.asarray(tensor.data)
        if name not in quantized:
            assert after[name].tensor_type == tensor.tensor_type
            assert np.asarray(after[name].data).tobytes() == raw.tobytes(), name
            continue
        assert after[name].tensor_type.name == copy.float_type, name
        values = np.asarray(dequantize(raw, tensor.tensor_type), dtype=np.float32)
        expected = to_float_type(values.reshape(-1), copy.float_type).tobytes()
        assert np.asarray(after[name].data).tobytes() == expected, f"{name} ({tensor.tensor_type.name})"


def engine_against_shim(shim: Shim, model: Path, tokens: tuple[int, ...]) -> npt.NDArray[np.float64]:
    reference, _ = shim.logits(model, tokens, kv_type="f32")
    return kl_per_position(reference, load_engine(model).forward(tokens))


@pytest.mark.parametrize(
    ("arch", "tensor_type"),
    [
        ("llama", "Q8_0"),
        ("llama", "Q4_0"),
        ("llama", "Q5_0"),
        ("gemma3", "Q4_0"),
        ("bitnet", "TQ1_0"),
        ("bitnet", "TQ2_0"),
    ],
)
def test_on_the_float_copy_llama_cpp_and_the_engine_agree_at_float_precision(
    shim: Shim, synthetic_model: ModelMaker, tmp_path: Path, arch: str, tensor_type: str
) -> None:
    model = synthetic_model(arch, tensor_type)
    copy = float_copy(model, shim, cache=CacheLayout(tmp_path / "cache"), threads=2)
    assert not copy.cached and copy.float_type == "F32" and copy.backend == "llama"
    assert_is_the_backends_float_copy(model, copy)
    tokens = shim.tokenize(model, PROMPT, add_bos=True, parse_special=False).tokens
    on_copy = engine_against_shim(shim, copy.path, tokens)
    on_original = engine_against_shim(shim, model, tokens)
    print(f"\n{arch} {tensor_type}: max KL on the copy {on_copy.max():.3g}, on the original {on_original.max():.3g}")
    assert on_copy.max() < 1e-5  # float precision (measured: 6e-12 llama, 2e-7 gemma3 with its fp16 GELU table)
    assert on_original.max() > 1e-4  # llama.cpp's 8-bit activations: not a float computation


def test_k_quants_made_by_llama_cpp(shim: Shim, synthetic_model: ModelMaker, tmp_path: Path) -> None:
    f32 = synthetic_model("llama", "F32")
    model = tmp_path / "llama-q4_k_m.gguf"
    shim.quantize(f32, model, "Q4_K_M")
    types = {read_layout(model).tensor(n).type_id for n in quantized_tensors(model)}
    assert {12, 14} <= types  # Q4_K and Q6_K
    copy = float_copy(model, shim, cache=CacheLayout(tmp_path / "cache"), threads=2)
    assert_is_the_backends_float_copy(model, copy)
    tokens = shim.tokenize(model, PROMPT, add_bos=True, parse_special=False).tokens
    on_copy = engine_against_shim(shim, copy.path, tokens).max()
    print(f"\nllama Q4_K_M: max KL on the copy {on_copy:.3g}")
    assert on_copy < 1e-5


def test_f16_and_bf16_copies_are_rounded_by_llama_cpp(shim: Shim, synthetic_model: ModelMaker, tmp_path: Path) -> None:
    model = synthetic_model("gemma3", "Q4_0")
    cache = CacheLayout(tmp_path / "cache")
    tokens = shim.tokenize(model, PROMPT, add_bos=True, parse_special=False).tokens
    for float_type in ("F16", "BF16"):
        copy = float_copy(model, shim, cache=cache, float_type=float_type, threads=2)
        assert copy.float_type == float_type and copy.reason == f"{float_type}, as asked"
        assert_is_the_backends_float_copy(model, copy)  # ggml's rounding of the F32 values, bit for bit
        kl = engine_against_shim(shim, copy.path, tokens)
        print(f"\ngemma3 Q4_0 as {float_type}: max KL {kl.max():.3g}")
        assert kl.max() < 1e-3  # llama.cpp rounds activations to the weights' type; still far below Q4_0's floor


def test_a_second_request_reuses_the_copy(shim: Shim, synthetic_model: ModelMaker, tmp_path: Path) -> None:
    model = synthetic_model("llama", "Q8_0")
    cache = CacheLayout(tmp_path / "cache")
    first = float_copy(model, shim, cache=cache, threads=2)
    stamp = first.path.stat().st_mtime_ns
    second = float_copy(model, shim, cache=cache, model_sha256=file_sha256(model))
    assert second.cached and second.path == first.path and second.path.stat().st_mtime_ns == stamp


def _worker(model: Path, cache: Path, result: Path, *args: str, err: Path) -> subprocess.Popen[str]:
    with err.open("w") as handle:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(model), str(cache), str(result), *args], stderr=handle, text=True
        )


def _wait_for_text(path: Path, text: str, proc: subprocess.Popen[str]) -> None:
    import time

    deadline = time.monotonic() + 120
    while text not in (path.read_text() if path.exists() else ""):
        assert proc.poll() is None, f"the worker ended ({proc.returncode}) before saying {text!r}: {path.read_text()}"
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


def test_two_processes_asking_at_once_get_one_copy(shim: Shim, synthetic_model: ModelMaker, tmp_path: Path) -> None:
    """Both workers are started while a third process holds the copy's lock, so both are
    waiting when it is released: they race for real, with the real llama.cpp."""
    model = synthetic_model("gemma3", "Q4_0")
    cache = tmp_path / "cache"
    ident = backend_identity(shim.info())
    lock = CacheLayout(cache).float_copy_lock(file_sha256(model), ident.name, ident.commit)
    ready, release = tmp_path / "holder.ready", tmp_path / "holder.release"
    holder = subprocess.Popen([sys.executable, str(HOLDER), str(lock), str(ready), str(release), "120"])
    wait_for(ready, proc=holder)
    workers = []
    for name in ("a", "b"):
        err = tmp_path / f"{name}.err"
        proc = _worker(model, cache, tmp_path / f"{name}.json", "--shim", str(shim.executable), err=err)
        workers.append((proc, err))
    for proc, err in workers:
        _wait_for_text(err, "waiting for the lock", proc)
    release.touch()
    assert holder.wait(timeout=60) == 0
    for proc, err in workers:
        assert proc.wait(timeout=300) == 0, err.read_text()
    results = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b")]
    assert sorted(r["cached"] for r in results) == [False, True]  # one wrote it, the other found it
    assert results[0]["path"] == results[1]["path"]
    copies = sorted(p.name for p in (cache / "float-copies").iterdir())
    assert copies == [Path(results[0]["path"]).name, Path(results[0]["path"]).name + ".json"]


def test_a_writer_holds_the_lock_until_its_copy_is_complete(synthetic_model: ModelMaker, tmp_path: Path) -> None:
    """Real processes, the backend a stand-in that works until told to stop: the second process
    waits for the first one's copy instead of writing its own."""
    model = synthetic_model("llama", "Q4_0")
    cache = tmp_path / "cache"
    started, release = tmp_path / "started", tmp_path / "release"
    fake = ("--fake-started", str(started), "--fake-release", str(release))
    first = _worker(model, cache, tmp_path / "first.json", *fake, err=tmp_path / "first.err")
    wait_for(started, proc=first)
    second_err = tmp_path / "second.err"
    second = _worker(model, cache, tmp_path / "second.json", *fake, err=second_err)
    _wait_for_text(second_err, "waiting for the lock", second)
    assert "write the float copy of llama-Q4_0.gguf" in second_err.read_text()  # says what it waits for
    assert not list((cache / "float-copies").glob("*.gguf"))  # nothing finished yet
    release.touch()
    assert first.wait(timeout=120) == 0, (tmp_path / "first.err").read_text()
    assert second.wait(timeout=120) == 0, second_err.read_text()
    first_result = json.loads((tmp_path / "first.json").read_text())
    second_result = json.loads((tmp_path / "second.json").read_text())
    assert (first_result["cached"], second_result["cached"]) == (False, True)
    assert first_result["path"] == second_result["path"]


@pytest.mark.slow
def test_gemma3_270m_q4_k_m_float_copy(shim: Shim, tmp_path: Path) -> None:
    """The real model: on its float copy the engine matches llama.cpp at float precision; on the
    model as shipped the same engine is off by llama.cpp's 8-bit activations."""
    import os

    from bitnet_crossval.crossval.models import fetch_gemma3_270m

    cache = CacheLayout(tmp_path / "cache")
    model = fetch_gemma3_270m(cache=cache, env=dict(os.environ))
    copy = float_copy(model, shim, cache=cache)
    print(f"\nGemma 3 270M: {copy.size_bytes / 1e9:.2f} GB F32 copy in {copy.seconds:.1f} s")
    assert copy.float_type == "F32" and copy.by_backend == 127
    assert_is_the_backends_float_copy(model, copy)
    again = float_copy(model, shim, cache=cache)
    assert again.cached
    prompt = list(shim.tokenize(model, PROMPT, add_bos=True, parse_special=False).tokens)
    tokens = tuple(prompt + list(shim.generate(model, prompt, n=16, kv_type="f32").tokens))
    on_copy = engine_against_shim(shim, copy.path, tokens)
    on_original = engine_against_shim(shim, model, tokens)
    print(f"max KL on the copy {on_copy.max():.3g}, on the model as shipped {on_original.max():.3g}")
    assert on_copy.max() < 1e-4  # measured 7e-6 (a float engine against the float copy)
    assert on_original.max() > 1e-2  # measured 0.118 (the false alarm of a 0.1 limit)
