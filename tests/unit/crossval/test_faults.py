"""The deliberate faults: each changes the result, and first changes the tensor it names."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.engine import FAULTS, EngineOptions, Fault, FaultName, TraceRecorder, load_engine
from bitnet_crossval.errors import BadInput

TOKENS = [1, 300, 301, 279, 340, 310, 2, 355, 299, 360, 270, 333, 290, 301]  # longer than gemma3's window of 6

CASES = [
    (arch, name) for name, spec in FAULTS.items() for arch in ("llama", "gemma3", "bitnet") if arch in spec.families
]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((a - b) ** 2).mean() / max(float((b**2).mean()), 1e-30)))


def first_difference(faulty: TraceRecorder, clean: TraceRecorder, tolerance: float) -> str | None:
    for key in clean:
        if key not in faulty or rel(faulty[key], clean[key]) > tolerance:
            return key
    return None


def test_every_fault_is_covered_by_some_architecture() -> None:
    assert {name for _arch, name in CASES} == set(FAULTS)


@pytest.mark.parametrize(("arch", "name"), CASES)
def test_fault_changes_logits_and_is_located(model_factory: Any, arch: str, name: str) -> None:
    path = model_factory(arch)
    clean_trace, faulty_trace = TraceRecorder(), TraceRecorder()
    clean = load_engine(path).forward(TOKENS, trace=clean_trace)
    engine = load_engine(path, EngineOptions(fault=Fault(name=name)))  # type: ignore[arg-type]
    faulty = engine.forward(TOKENS, trace=faulty_trace)
    assert rel(faulty, clean) > 1e-2
    site = engine.fault_site()
    assert site is not None
    assert first_difference(faulty_trace, clean_trace, tolerance=1e-6) == site.key
    assert faulty_trace.keys() == clean_trace.keys()  # a fault changes values, never the graph's names
    assert engine.describe()["fault"]["name"] == name


NEUTRAL = [
    ("llama", "rope_base", 1.0),
    ("bitnet", "ternary_scale", 1.0),
    ("gemma3", "sliding_window", 6.0),
    ("llama", "norm_eps", 1e-5),
]


@pytest.mark.parametrize(("arch", "name", "value"), NEUTRAL)
def test_a_fault_at_its_neutral_magnitude_changes_nothing(
    model_factory: Any, arch: str, name: str, value: float
) -> None:
    path = model_factory(arch)
    clean = load_engine(path).forward(TOKENS)
    neutral = load_engine(path, EngineOptions(fault=Fault(name=name, value=value))).forward(TOKENS)  # type: ignore[arg-type]
    np.testing.assert_allclose(neutral, clean, rtol=1e-6, atol=1e-6)


def test_sliding_window_fault_leaves_positions_inside_the_window_alone(model_factory: Any) -> None:
    path = model_factory("gemma3")
    clean = load_engine(path).forward(TOKENS)
    faulty = load_engine(path, EngineOptions(fault=Fault(name=FaultName("sliding_window")))).forward(TOKENS)
    np.testing.assert_allclose(faulty[:6], clean[:6], rtol=1e-6, atol=1e-6)
    assert rel(faulty[6:], clean[6:]) > 1e-2


@pytest.mark.parametrize(
    ("arch", "name", "changes", "message"),
    [
        ("llama", "missing_qk_norm", {}, "applies to gemma3 models, not to llama"),
        ("gemma3", "ternary_scale", {}, "applies to bitnet models"),
        ("llama", "gqa_mapping", {"n_head_kv": 4}, "changes nothing on a model with 4 heads and 4 K/V heads"),
        ("gemma3", "sliding_window", {"sliding_window": 0}, "needs a model with sliding-window layers"),
    ],
)
def test_faults_that_cannot_act_are_refused(
    model_factory: Any, arch: str, name: str, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        load_engine(model_factory(arch, **changes), EngineOptions(fault=Fault(name=name)))  # type: ignore[arg-type]


def test_unknown_fault_is_bad_input() -> None:
    with pytest.raises(BadInput, match="unknown fault 'bad_luck'"):
        Fault(name="bad_luck")  # type: ignore[arg-type]


def test_only_the_window_fault_needs_a_run_past_the_window(model_factory: Any) -> None:
    path = model_factory("gemma3")
    needs = {
        name: load_engine(path, EngineOptions(fault=Fault(name=name))).fault_positions()
        for name, spec in FAULTS.items()
        if "gemma3" in spec.families
    }
    # The synthetic gemma3 window is 6: the first position it changes is 6, the run goes 16 past.
    assert needs.pop(FaultName("sliding_window")) == 6 + 16
    assert set(needs.values()) == {None}
