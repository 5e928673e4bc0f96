"""The hf candidate's real child (torch, transformers) against the real llama.cpp and the NumPy engine.

Synthetic float models of each architecture transformers reads from a GGUF (llama, gemma3), on
llama.cpp's SentencePiece vocabulary; the tokens are a prompt tokenised by the shim plus the
continuation llama.cpp generated. The trace of every run is compared with the shim's own trace
by the suite's comparison, and a deliberately broken module must be found by name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torch")

from bitnet_crossval.crossval.candidates import TraceRequest
from bitnet_crossval.crossval.engine import load_engine
from bitnet_crossval.crossval.hf import hf_argv, run_hf
from bitnet_crossval.crossval.hf.candidate import HfCandidate
from bitnet_crossval.crossval.hf.runner import PATCH_ENV
from bitnet_crossval.crossval.synthetic import write_synthetic_model
from bitnet_crossval.crossval.trace import RefTensor, TraceComparison, compare_traces, read_trace_dir
from bitnet_crossval.errors import BadInput, CandidateFailed
from bitnet_crossval.reference.client import Shim
from tests.conftest import child_env

pytestmark = [pytest.mark.integration, pytest.mark.hf, pytest.mark.timeout(1200)]

PROMPT = "The quick brown fox jumps over the lazy dog while the cat watches from a sunny window sill."
N_GENERATED = 8
# Float weights: transformers and llama.cpp add in different orders; gemma3's GELU goes through
# llama.cpp's fp16 table (the NumPy engine emulates it, transformers does not): measured KL 5.6e-7.
KL_FLOAT = 2e-6
REL_TOL_FLOAT = 0.02
FAULTS = Path(__file__).parents[2] / "data" / "hf_broken"
"""hf_faults.py: functions the child's fault-injection seam (BITNET_HF_PATCH) calls on the model."""
# What transformers never materialises (taps.py): the bare RMS norms, gemma3's unscaled embedding.
NEVER_WRITTEN = {"norm", "embd"}


def kl_per_position(ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    log_p = r - r.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    log_q = c - c.max(axis=1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(axis=1, keepdims=True))
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)  # type: ignore[no-any-return]


class Models:
    """Synthetic models written once for the module, their tokens, and the shim's view of them."""

    def __init__(self, directory: Path, vocab: Path, shim: Shim) -> None:
        self.directory = directory
        self.vocab = vocab
        self.shim = shim
        self._made: dict[str, tuple[Path, npt.NDArray[np.int32]]] = {}

    def get(self, arch: str, **spec: Any) -> tuple[Path, npt.NDArray[np.int32]]:
        key = arch + repr(sorted(spec.items()))
        if key not in self._made:
            from dataclasses import replace

            from bitnet_crossval.crossval.synthetic import default_spec

            path = self.directory / f"{arch}-{len(self._made)}.gguf"
            write_synthetic_model(path, arch=arch, vocab=self.vocab, spec=replace(default_spec(arch), **spec))
            prompt = list(self.shim.tokenize(path, PROMPT, add_bos=True, parse_special=False).tokens)
            generated = list(self.shim.generate(path, prompt, n=N_GENERATED).tokens)
            self._made[key] = (path, np.asarray(prompt + generated, dtype=np.int32))
        return self._made[key]

    def reference(self, model: Path, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
        logits, _doc = self.shim.logits(model, [int(t) for t in tokens], kv_type="f32")
        return np.asarray(logits)

    def trace(
        self, model: Path, tokens: npt.NDArray[np.int32], candidate: Path, out: Path, *, arch: str
    ) -> TraceComparison:
        positions = list(range(len(tokens)))
        ref = self.shim.trace(model, [int(t) for t in tokens], out_dir=out, positions=positions, kv_type="f32")
        tensors = [RefTensor(name=t.name, layer=t.layer, op=t.op, shape=t.shape, load=t.load) for t in ref.tensors]
        return compare_traces(
            tensors,
            read_trace_dir(candidate),
            architecture=arch,
            positions=positions,
            precision="F32",
            rel_tol=REL_TOL_FLOAT,
        )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, llama_source: Path, llama_shim: Shim) -> Models:
    return Models(
        tmp_path_factory.mktemp("hf-models"), llama_source / "models" / "ggml-vocab-llama-spm.gguf", llama_shim
    )


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-cache")


@pytest.fixture
def env(hf_cache: Path) -> dict[str, str]:
    return child_env(hf_cache)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_hf_computes_what_llama_cpp_computes(
    arch: str, models: Models, hf_cache: Path, env: dict[str, str], tmp_path: Path
) -> None:
    model, tokens = models.get(arch)
    run = run_hf(
        model=model, tokens=tokens, work_dir=tmp_path, env=env, timeout=900,
        trace_dir=tmp_path / "trace", cache_root=hf_cache,
    )  # fmt: skip
    reference = models.reference(model, tokens)
    numpy_logits = load_engine(model).forward(tokens)
    kl_ref, kl_numpy = kl_per_position(reference, run.logits), kl_per_position(numpy_logits, run.logits)
    print(f"\n{arch}: hf vs llama.cpp KL max {kl_ref.max():.2e}, hf vs NumPy engine KL max {kl_numpy.max():.2e}")
    assert run.logits.shape == reference.shape and run.logits.dtype == np.float32
    assert kl_ref.max() < KL_FLOAT and kl_numpy.max() < KL_FLOAT
    assert (run.logits.argmax(axis=1) == reference.argmax(axis=1)).all()

    comparison = models.trace(model, tokens, tmp_path / "trace", tmp_path / "reference-trace", arch=arch)
    assert comparison.first_departure is None, comparison.sentence()
    assert {name.split("-")[0] for name in comparison.missing_in_candidate} <= NEVER_WRITTEN
    assert comparison.only_in_candidate == []
    assert len(comparison.compared) >= 15 * 2
    layouts = {c.layout for c in comparison.compared if c.name.startswith(("Qcur-", "Kcur-"))}
    # llama's GGUF stores rotary pairs adjacent, transformers keeps them as halves; gemma3 rotates halves in both
    assert layouts == ({"as is, rotary halves in Hugging Face order"} if arch == "llama" else {"as is"})

    findings = {f["setting"]: f["action"] for f in run.details["config_findings"]}
    if arch == "gemma3":  # head size 128 and window pattern 3: neither is transformers' default
        assert findings == {"query_pre_attn_scalar": "corrected", "layer_types": "corrected"}
    else:
        assert findings == {}
    assert run.details["dtype"] == "float32" and run.details["attention"] == "eager"


def test_llama_biases_are_read_from_the_file(
    models: Models, hf_cache: Path, env: dict[str, str], tmp_path: Path
) -> None:
    model, tokens = models.get("llama", attention_bias=True, ffn_bias=True)
    run = run_hf(model=model, tokens=tokens, work_dir=tmp_path, env=env, timeout=900, cache_root=hf_cache)
    assert kl_per_position(models.reference(model, tokens), run.logits).max() < KL_FLOAT
    assert {f["setting"] for f in run.details["config_findings"]} == {"attention_bias", "mlp_bias"}


@pytest.mark.parametrize(
    ("arch", "fault", "expected"),
    [("llama", "scale_up_proj", "ffn_up-1"), ("gemma3", "skip_q_norm", "Qcur_normed-2")],
)
def test_a_broken_module_is_caught_and_named(
    arch: str, fault: str, expected: str, models: Models, hf_cache: Path, env: dict[str, str], tmp_path: Path
) -> None:
    model, tokens = models.get(arch)
    patched = {**env, PATCH_ENV: f"hf_faults:{fault}", "PYTHONPATH": str(FAULTS)}
    run = run_hf(
        model=model, tokens=tokens, work_dir=tmp_path, env=patched, timeout=900,
        trace_dir=tmp_path / "trace", cache_root=hf_cache,
    )  # fmt: skip
    assert run.details["patched_by"] == f"hf_faults:{fault}"
    kl = kl_per_position(models.reference(model, tokens), run.logits)
    assert kl.max() > 0.002, kl  # the crossval's limit for float weights: a divergence
    comparison = models.trace(model, tokens, tmp_path / "trace", tmp_path / "reference-trace", arch=arch)
    assert comparison.first_departure is not None, comparison.sentence()
    assert comparison.first_departure.name == expected, comparison.sentence()
    assert comparison.last_agreement is not None
    print(f"\n{arch} with {fault}: KL max {kl.max():.3g}; trace: {comparison.sentence()}")


def test_the_cache_is_written_once_by_concurrent_first_runs(models: Models, tmp_path: Path) -> None:
    model, tokens = models.get("llama")
    cache = tmp_path / "cache"
    env = child_env(cache)
    np.save(tmp_path / "tokens.npy", tokens)
    children = []
    for i in range(2):
        argv = hf_argv(
            model=model, tokens=tmp_path / "tokens.npy", out=tmp_path / f"logits{i}.npy", cache_root=cache,
            details=tmp_path / f"details{i}.json",
        )  # fmt: skip
        children.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [child.communicate(timeout=900)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    states = sorted(json.loads((tmp_path / f"details{i}.json").read_text())["cache"]["state"] for i in range(2))
    assert states == ["hit", "written"], outputs
    assert sum(out.count("writing the dequantised weights") for out in outputs) == 1
    np.testing.assert_array_equal(np.load(tmp_path / "logits0.npy"), np.load(tmp_path / "logits1.npy"))
    entries = list((cache / "hf-weights").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    assert sorted(p.name for p in entries[0].iterdir()) == ["config.json", "crossval-hf.json", "model.safetensors"]


def test_hf_path_checks_a_conversion(models: Models, hf_cache: Path, env: dict[str, str], tmp_path: Path) -> None:
    """A checkpoint directory (here: the cache's own copy of the synthetic llama, which is one) runs
    instead of the GGUF; a checkpoint whose config differs from the file is reported and caught."""
    model, tokens = models.get("llama")
    first = run_hf(model=model, tokens=tokens, work_dir=tmp_path / "gguf", env=env, timeout=900, cache_root=hf_cache)
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(first.details["cache"]["entry"], checkpoint)
    good = run_hf(model=model, tokens=tokens, work_dir=tmp_path / "good", env=env, timeout=900, checkpoint=checkpoint)
    assert good.details["source"] == {"kind": "checkpoint", "path": str(checkpoint)}
    assert good.details["config_findings"] == []
    assert kl_per_position(models.reference(model, tokens), good.logits).max() < KL_FLOAT

    config = json.loads((checkpoint / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = 20000.0  # a conversion that wrote the wrong RoPE base
    (checkpoint / "config.json").write_text(json.dumps(config))
    bad = run_hf(
        model=model, tokens=tokens, work_dir=tmp_path / "bad", env=env, timeout=900, checkpoint=checkpoint,
        trace_dir=tmp_path / "trace",
    )  # fmt: skip
    assert bad.details["config_findings"] == [
        {
            "action": "differs",
            "model_file": 10000.0,
            "setting": "rope_parameters.rope_theta",
            "source": "llama.rope.freq_base",
            "transformers": 20000.0,
        }
    ]
    assert kl_per_position(models.reference(model, tokens), bad.logits).max() > 0.002
    comparison = models.trace(model, tokens, tmp_path / "trace", tmp_path / "reference-trace", arch="llama")
    assert comparison.first_departure is not None and comparison.first_departure.name == "Qcur-0"


def test_what_transformers_cannot_run_is_bad_input(
    models: Models, hf_cache: Path, env: dict[str, str], tmp_path: Path
) -> None:
    bitnet = tmp_path / "bitnet.gguf"
    write_synthetic_model(bitnet, arch="bitnet", vocab=models.vocab)
    with pytest.raises(BadInput) as caught:
        run_hf(
            model=bitnet,
            tokens=np.array([1, 2], np.int32),
            work_dir=tmp_path,
            env=env,
            timeout=900,
            cache_root=hf_cache,
        )
    assert "cannot read GGUF models of architecture 'bitnet'" in caught.value.message
    assert "hf:PATH" in caught.value.next_step

    model, _tokens = models.get("llama")
    with pytest.raises(BadInput, match=r"must lie in \[0, 32000\)"):
        run_hf(
            model=model,
            tokens=np.array([1, 32000], np.int32),
            work_dir=tmp_path,
            env=env,
            timeout=900,
            cache_root=hf_cache,
        )


def test_a_child_past_its_time_limit_is_stopped(models: Models, env: dict[str, str], tmp_path: Path) -> None:
    model, tokens = models.get("llama")
    with pytest.raises(CandidateFailed, match="did not finish within 1s and was stopped"):
        run_hf(model=model, tokens=tokens, work_dir=tmp_path, env=env, timeout=1, cache_root=None)


def test_the_candidate_protocol(models: Models, hf_cache: Path, env: dict[str, str], tmp_path: Path) -> None:
    model, tokens = models.get("llama")
    candidate = HfCandidate("hf", checkpoint=None, env=env, n_vocab=32000, timeout=900, cache_root=hf_cache)
    output = candidate.run(model, tokens, work_dir=tmp_path / "run", trace=False)
    assert output.logits.shape == (len(tokens), 32000) and output.trace_dir is None
    assert output.details["cache"]["state"] in {"hit", "written"} and output.details["argv"][1:3] == [
        "-m",
        "bitnet_crossval.crossval.hf",
    ]
    traced = candidate.trace(
        model, tokens, request=TraceRequest(positions=[0, 1, 2], layers=(1, 1)), work_dir=tmp_path / "t"
    )
    assert traced is not None and traced and all(name.endswith("-1") for name in traced)
    assert traced["l_out-1"]().shape == (3, 256)
    wrong_vocab = HfCandidate("hf", checkpoint=None, env=env, n_vocab=100, timeout=900, cache_root=hf_cache)
    with pytest.raises(CandidateFailed, match=r"returned shape \[\d+, 32000\], expected"):
        wrong_vocab.run(model, tokens, work_dir=tmp_path / "wrong", trace=False)
