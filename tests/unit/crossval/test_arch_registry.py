"""The engine's architecture registry, and an architecture added from outside the library.

``qwen2`` is declared in one module of the tests (tests/qwen2_architecture.py) and registered
here; with no other edit it parses as ``--model synthetic:qwen2``, gets a synthetic model in
the cache, loads, runs a forward pass (checked against an independent float64 pass of
llama.cpp's qwen2 graph) and a trace, and its faults join ``FAULTS``, the self-check's cases and
``fault_site``. Against the real llama.cpp: tests/integration/crossval/test_registered_arch_real.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval import selfcheck
from bitnet_crossval.crossval.candidates import parse_candidate
from bitnet_crossval.crossval.candidates.numpy_engine import NumpySpec
from bitnet_crossval.crossval.engine import (
    ALL_ARCHITECTURES,
    FAULT_NAMES,
    FAULTS,
    Architecture,
    EngineOptions,
    Fault,
    FaultName,
    GGUFModelFile,
    TraceRecorder,
    load_engine,
    register,
    unregister,
)
from bitnet_crossval.crossval.engine.archs import architecture_of, find_architecture
from bitnet_crossval.crossval.engine.faults import FaultSpec, LocatedFault, at
from bitnet_crossval.crossval.models import SYNTHETIC_ARCHS, VOCABULARY_FILE, parse_model, resolve_model
from bitnet_crossval.crossval.synthetic import default_spec, write_synthetic_model
from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.layout import CacheLayout
from tests import qwen2_architecture
from tests.unit.crossval import naive

TOKENS = [1, 300, 301, 279, 340, 310, 2, 355, 299, 360, 270, 333]
QWEN2_FAULTS = [
    "rope_type",
    "rope_base",
    "norm_eps",
    "swapped_gate_up",
    "gqa_mapping",
    "mask_ahead",
    "mask_no_self",
    "missing_qkv_bias",
]

# Checked by mypy: the module satisfies the Protocol as it is.
TOY: Architecture = qwen2_architecture


@pytest.fixture
def qwen2() -> Iterator[Architecture]:
    """The toy architecture, registered for one test only (the registry is process-wide)."""
    register(TOY)
    try:
        yield TOY
    finally:
        unregister(TOY.NAME)


@pytest.fixture
def toy_model(qwen2: Architecture, tmp_path: Path, tiny_vocab: Path) -> Path:
    """``--model synthetic:qwen2`` resolved as a run resolves it: written into a cache."""
    source = tmp_path / "llama.cpp"
    (source / "models").mkdir(parents=True)
    shutil.copyfile(tiny_vocab, source / "models" / VOCABULARY_FILE)
    choice = parse_model("synthetic:qwen2")
    return resolve_model(choice, cache=CacheLayout(tmp_path / "cache"), env={}, source_dirs=[source])


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean() / max(float((b**2).mean()), 1e-30)))


def naive_qwen2(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's qwen2 graph in float64, from gguf-py's reader: biased Q/K/V, RoPE NEOX, SiLU FFN."""
    arch, meta, w = naive._read(path)
    assert arch == "qwen2"
    n_head, n_kv = meta["qwen2.attention.head_count"], meta["qwen2.attention.head_count_kv"]
    eps, base = meta["qwen2.attention.layer_norm_rms_epsilon"], meta["qwen2.rope.freq_base"]
    hd = meta["qwen2.embedding_length"] // n_head
    n = len(tokens)
    x = w["token_embd.weight"][tokens]
    for il in range(meta["qwen2.block_count"]):
        p = f"blk.{il}."
        h = naive._rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T + w[p + "attn_q.bias"]).reshape(n, n_head, hd)
        k = (h @ w[p + "attn_k.weight"].T + w[p + "attn_k.bias"]).reshape(n, n_kv, hd)
        v = (h @ w[p + "attn_v.weight"].T + w[p + "attn_v.bias"]).reshape(n, n_kv, hd)
        o = naive._attention(naive._rope(q, base, "neox"), naive._rope(k, base, "neox"), v, scale=hd**-0.5, window=0)
        x = x + o @ w[p + "attn_output.weight"].T
        h = naive._rms(x, w[p + "ffn_norm.weight"], eps)
        g = h @ w[p + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return np.asarray(naive._rms(x, w["output_norm.weight"], eps) @ w["output.weight"].T)


# --- the registry ---


def test_the_shipped_architectures_are_registered_with_their_gguf_names() -> None:
    assert list(ALL_ARCHITECTURES) == ["llama", "bitnet", "gemma3"]
    assert [architecture_of(name).NAME for name in ("llama", "gemma3", "bitnet", "bitnet-b1.58", "bitnet-25")] == [
        "llama",
        "gemma3",
        "bitnet",
        "bitnet",
        "bitnet",
    ]
    assert {name: arch.ROPE_TYPE for name, arch in ALL_ARCHITECTURES.items()} == {
        "llama": "norm",
        "bitnet": "neox",
        "gemma3": "neox",
    }
    assert list(SYNTHETIC_ARCHS) == list(selfcheck.ARCHITECTURES) == ["llama", "bitnet", "gemma3"]


def test_an_unregistered_architecture_is_bad_input_naming_the_supported_ones() -> None:
    supported = r"\(supported: bitnet, bitnet-25, bitnet-b1\.58, gemma3, llama\)"
    with pytest.raises(BadInput, match=r"'qwen2' is not supported by the NumPy reference engine " + supported):
        architecture_of("qwen2")
    with pytest.raises(BadInput, match="'synthetic:qwen2' is not a synthetic model"):
        parse_model("synthetic:qwen2")
    with pytest.raises(BadInput, match="no synthetic model for architecture 'qwen2'"):
        default_spec("qwen2")
    with pytest.raises(BadInput, match="'qwen2' is not an architecture of the NumPy engine"):
        selfcheck.cases_for("qwen2")


def test_register_refuses_what_would_make_the_registry_ambiguous(qwen2: Architecture) -> None:
    with pytest.raises(ValueError, match="named 'qwen2' is registered already"):
        register(qwen2)
    register(qwen2, replace=True)  # the same module again, on purpose
    impostor = SimpleNamespace(**{name: getattr(qwen2, name) for name in dir(qwen2) if name.isupper()})
    impostor.read_hparams, impostor.tensor_shapes = qwen2.read_hparams, qwen2.tensor_shapes
    impostor.forward, impostor.describe = qwen2.forward, qwen2.describe
    impostor.NAME = "qwen2-again"
    with pytest.raises(ValueError, match="'qwen2' runs qwen2 already"):
        register(impostor)
    impostor.GGUF_NAMES = ("qwen2-again",)
    impostor.FAULTS = (LocatedFault(FaultSpec(name=FaultName("missing_qkv_bias"), description="other"), at("Qcur")),)
    with pytest.raises(ValueError, match="a different fault named 'missing_qkv_bias'"):
        register(impostor)
    assert find_architecture("qwen2-again") is None
    with pytest.raises(TypeError, match=r"lacks .*forward"):
        register(SimpleNamespace(NAME="half", GGUF_NAMES=("half",)))


def test_a_registered_architecture_appears_everywhere_and_leaves_no_trace_when_removed() -> None:
    register(TOY)
    try:
        assert "qwen2" in SYNTHETIC_ARCHS and "qwen2" in selfcheck.ARCHITECTURES
        assert "missing_qkv_bias" in FAULT_NAMES and FAULTS[FaultName("missing_qkv_bias")].families == {"qwen2"}
        assert FAULTS[FaultName("rope_type")].families == {"llama", "bitnet", "gemma3", "qwen2"}
        spec = parse_candidate("numpy:missing_qkv_bias")
        assert isinstance(spec, NumpySpec) and spec.fault == "missing_qkv_bias"
        assert parse_model("synthetic:qwen2:q8_0").arch == "qwen2"
    finally:
        unregister("qwen2")
    assert "qwen2" not in SYNTHETIC_ARCHS and "missing_qkv_bias" not in FAULT_NAMES
    assert FAULTS[FaultName("rope_type")].families == {"llama", "bitnet", "gemma3"}
    with pytest.raises(BadInput, match="not a fault the numpy engine can make"):
        parse_candidate("numpy:missing_qkv_bias")


# --- the toy, end to end on the suite's side ---


def test_the_toy_gets_a_synthetic_model_with_its_own_tensors(toy_model: Path) -> None:
    model = GGUFModelFile(toy_model)
    assert model.architecture == "qwen2"
    assert model.get_str("general.name") == "synthetic-qwen2-f32-seed0"
    assert model.info("blk.2.attn_k.bias").ne == (128,)
    assert model.has_tensor("output.weight") and not model.has_tensor("blk.0.attn_sub_norm.weight")
    assert toy_model.parent.name == "models" and toy_model.name.startswith("synthetic-qwen2-f32-")


def test_the_toy_computes_qwen2s_graph(toy_model: Path) -> None:
    engine = load_engine(toy_model, EngineOptions(gelu_fp16_table=False))
    assert (engine.hparams.family, engine.hparams.rope_type, engine.hparams.rope_base) == ("qwen2", "neox", 1e6)
    logits = engine.forward(TOKENS)
    assert logits.shape == (len(TOKENS), engine.n_vocab)
    assert rel(logits, naive_qwen2(toy_model, TOKENS)) < 2e-5
    assert engine.describe()["architecture"] == "qwen2" and "bitnet_activation" not in engine.describe()


def test_the_toy_traces_under_qwen2s_names(toy_model: Path) -> None:
    recorder = TraceRecorder(layers=[0], include_global=False)
    load_engine(toy_model).forward(TOKENS, trace=recorder)
    # src/models/qwen2.cpp: no attn_out callback; K is expanded last by build_attn.
    assert recorder.keys() == [
        "attn_norm-0",
        "Qcur-0",
        "Vcur-0",
        "Kcur-0",
        "kqv_out-0",
        "ffn_inp-0",
        "norm-0",
        "ffn_norm-0",
        "ffn_gate-0",
        "ffn_up-0",
        "ffn_swiglu-0",
        "ffn_out-0",
        "l_out-0",
    ]


def test_the_toys_faults_are_the_selfchecks_cases(qwen2: Architecture) -> None:
    assert selfcheck.cases_for("qwen2") == [None, *QWEN2_FAULTS]


@pytest.mark.parametrize("name", QWEN2_FAULTS)
def test_each_fault_of_the_toy_changes_it_first_where_fault_site_says(toy_model: Path, name: str) -> None:
    clean_trace, faulty_trace = TraceRecorder(), TraceRecorder()
    clean = load_engine(toy_model).forward(TOKENS, trace=clean_trace)
    engine = load_engine(toy_model, EngineOptions(fault=Fault(name=FaultName(name))))
    faulty = engine.forward(TOKENS, trace=faulty_trace)
    assert rel(faulty, clean) > 1e-2
    site = engine.fault_site()
    assert site is not None
    first = next((key for key in clean_trace if rel(faulty_trace[key], clean_trace[key]) > 1e-6), None)
    assert first == site.key
    assert faulty_trace.keys() == clean_trace.keys()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing_sub_norm", "applies to bitnet models, not to qwen2"),
        ("sliding_window", "applies to gemma3 models, not to qwen2"),
    ],
)
def test_faults_the_toy_does_not_list_are_refused(toy_model: Path, fault: str, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        load_engine(toy_model, EngineOptions(fault=Fault(name=FaultName(fault))))


def test_the_toys_own_fault_is_refused_on_the_shipped_architectures(qwen2: Architecture, model_factory: Any) -> None:
    with pytest.raises(BadInput, match="'missing_qkv_bias' applies to qwen2 models, not to llama"):
        load_engine(model_factory("llama"), EngineOptions(fault=Fault(name=FaultName("missing_qkv_bias"))))


def test_the_toy_writes_an_upstream_type_and_refuses_i2s(qwen2: Architecture, tmp_path: Path, tiny_vocab: Path) -> None:
    q8 = write_synthetic_model(tmp_path / "q8.gguf", arch="qwen2", tensor_type="Q8_0", vocab=tiny_vocab)
    assert GGUFModelFile(q8).info("blk.0.attn_q.weight").type_name == "Q8_0"
    with pytest.raises(BadInput, match="I2_S is a bitnet-only format"):
        write_synthetic_model(tmp_path / "x.gguf", arch="qwen2", tensor_type="I2_S", vocab=tiny_vocab)
