"""Which reference a candidate on a quantised model follows, and the limit each position is judged at.

The two references are made here as llama.cpp makes them on a quantised model: ``dequantized``
is exact float arithmetic, ``native`` the same logits moved by a rounding noise that differs from
position to position. The candidates: one equal to each reference, and float engines with a small
bug that the choice of reference must not hide.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_FLOAT, DEFAULT_KL_MAX_QUANTIZED, ReferenceMode
from bitnet_crossval.crossval.metrics import PositionMetrics, Thresholds
from bitnet_crossval.crossval.references import (
    NOISE_FACTOR,
    Distance,
    Evaluated,
    ReferenceChoice,
    decide,
    evaluate,
    judge,
    kl_per_position,
    references_to_run,
)
from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.dequantize import FloatCopy

N_POSITIONS, N_VOCAB = 24, 64
FLOAT = Thresholds(kl_max=DEFAULT_KL_MAX_FLOAT, tie_margin=0.5)
QUANTIZED = Thresholds(kl_max=DEFAULT_KL_MAX_QUANTIZED, tie_margin=0.5)


def _references(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    dequantized = rng.normal(0.0, 3.0, size=(N_POSITIONS, N_VOCAB)).astype(np.float32)
    # The rounding noise of the activations: larger at some positions than at others.
    scale = rng.uniform(0.02, 0.25, size=(N_POSITIONS, 1))
    native = (dequantized + scale * rng.normal(size=dequantized.shape)).astype(np.float32)
    return native, dequantized


def _evaluated(native: np.ndarray, dequantized: np.ndarray | None) -> Evaluated:
    logits = {"native": native} if dequantized is None else {"native": native, "dequantized": dequantized}
    return Evaluated(
        tokens=list(range(N_POSITIONS)),
        logits=logits,  # type: ignore[arg-type]
        models={name: Path(f"/models/{name}.gguf") for name in logits},  # type: ignore[misc]
        settings={},
        float_copy=None,
    )


def _judge(
    mode: ReferenceMode, candidate: np.ndarray, *, float_model: bool = False
) -> tuple[ReferenceChoice, Thresholds, list[PositionMetrics]]:
    native, dequantized = _references()
    evaluated = _evaluated(native, None if float_model or mode == "native" else dequantized)
    return judge(
        mode,
        evaluated,
        candidate.astype(np.float32),
        base=FLOAT if float_model else QUANTIZED,
        float_limit=DEFAULT_KL_MAX_FLOAT,
    )


def _noise() -> np.ndarray:
    native, dequantized = _references()
    return kl_per_position(native, dequantized)


def test_the_references_are_noisy_as_a_quantised_model_is() -> None:
    # The premise of the tests below: the native rounding moves the distribution by more than the
    # float limit at many positions, and by little at some.
    noise = _noise()
    assert (noise > DEFAULT_KL_MAX_FLOAT).sum() >= N_POSITIONS // 2
    assert noise.min() < DEFAULT_KL_MAX_FLOAT


def test_a_candidate_equal_to_the_model_as_given_follows_native_at_per_position_limits() -> None:
    native, _ = _references()
    choice, thresholds, rows = _judge("auto", native)

    assert choice.followed == "native" and choice.references == ("native", "dequantized")
    assert choice.distances["native"].mean_kl == 0.0
    assert choice.distances["dequantized"].mean_kl > DEFAULT_KL_MAX_FLOAT
    noise = _noise()
    assert choice.limits == pytest.approx([DEFAULT_KL_MAX_FLOAT + NOISE_FACTOR * n for n in noise])
    assert thresholds.kl_max == DEFAULT_KL_MAX_FLOAT
    assert all(row.passed and row.kl == 0.0 for row in rows)


def test_a_candidate_equal_to_the_float_copy_follows_it_at_the_float_limit() -> None:
    _, dequantized = _references()
    choice, thresholds, rows = _judge("auto", dequantized)

    assert choice.followed == "dequantized" and choice.limits is None
    assert choice.distances["dequantized"].mean_kl == 0.0
    assert thresholds.kl_max == DEFAULT_KL_MAX_FLOAT
    assert all(row.passed for row in rows)
    # Judged against the model as given instead, the same exact float engine fails.
    native_choice, _, native_rows = _judge("native", dequantized)
    assert native_choice.references == ("native",)
    assert not all(row.kl <= DEFAULT_KL_MAX_FLOAT for row in native_rows)


def test_a_small_bug_in_a_float_engine_is_not_hidden_under_the_native_noise() -> None:
    _, dequantized = _references()
    bugged = dequantized.copy()
    bugged[10:, 5] += 2.0  # a wrong logit from position 10 on: small next to the vocabulary
    choice, _, rows = _judge("auto", bugged)

    assert choice.followed == "dequantized"
    failing = [row.position for row in rows if not row.passed]
    assert failing and failing[0] >= 10
    assert all(row.passed for row in rows[:10])


def test_a_bug_that_moves_a_candidate_nearer_native_is_still_held_to_per_position_limits() -> None:
    # A candidate that follows native's rounding but carries its own error: the limit per position
    # stays small where the native noise is small, so the bug fails there.
    native, _ = _references()
    noise = _noise()
    quiet = int(np.argmin(noise))
    bugged = native.copy()
    bugged[quiet] += np.linspace(0.0, 1.0, N_VOCAB, dtype=np.float32)
    choice, _, rows = _judge("auto", bugged)

    assert choice.followed == "native"
    assert choice.limits is not None
    assert not rows[quiet].passed
    assert rows[quiet].reasons[0].startswith("KL ")
    assert all(row.passed for row in rows if row.position != quiet)


def test_the_decision_is_one_for_the_whole_run() -> None:
    # Nearer native at most positions but farther at one: the mean decides, not each position.
    native = Distance.of(np.array([0.0, 0.0, 0.12]))
    dequantized = Distance.of(np.array([0.1, 0.1, 0.1]))
    assert decide({"native": native, "dequantized": dequantized}) == "native"
    assert decide({"native": dequantized, "dequantized": native}) == "dequantized"
    # Equal distances (an exact float engine where the rounding changes nothing): the stricter one.
    assert decide({"native": dequantized, "dequantized": dequantized}) == "dequantized"
    # Nearer native, but not clearly (a bug much larger than the rounding): the stricter one too.
    slightly_nearer = Distance.of(np.array([0.07, 0.07, 0.07]))
    assert decide({"native": slightly_nearer, "dequantized": dequantized}) == "dequantized"
    nowhere = Distance.of(np.array([math.nan]))
    assert decide({"native": nowhere, "dequantized": nowhere}) == "dequantized"


def test_asked_for_the_float_copy_a_candidate_equal_to_native_fails() -> None:
    native, _ = _references()
    choice, thresholds, rows = _judge("dequantized", native)

    assert choice.followed == "dequantized" and choice.why == "as asked"
    assert thresholds.kl_max == DEFAULT_KL_MAX_FLOAT
    assert not all(row.passed for row in rows)


def test_native_alone_keeps_the_quantised_limit() -> None:
    _, dequantized = _references()
    choice, thresholds, rows = _judge("native", dequantized)

    assert choice.followed == "native" and choice.limits is None
    assert thresholds.kl_max == DEFAULT_KL_MAX_QUANTIZED
    assert [row.passed for row in rows] == [row.kl <= DEFAULT_KL_MAX_QUANTIZED for row in rows]


def test_a_float_model_has_one_reference_whatever_is_asked() -> None:
    assert references_to_run("auto", quantized=False) == ("native",)
    assert references_to_run("dequantized", quantized=False) == ("native",)
    assert references_to_run("native", quantized=True) == ("native",)
    assert references_to_run("auto", quantized=True) == ("native", "dequantized")
    native, _ = _references()
    choice, thresholds, _ = _judge("auto", native, float_model=True)
    assert choice.followed == "native" and "no quantised weights" in choice.why
    assert thresholds.kl_max == DEFAULT_KL_MAX_FLOAT


def test_the_choice_in_json_names_the_limits_and_distances() -> None:
    native, _ = _references()
    choice, _, _ = _judge("auto", native)
    document = choice.to_json()

    assert document["followed"] == "native" and document["mode"] == "auto"
    assert document["noise_factor"] == NOISE_FACTOR
    assert len(document["kl_max_per_position"]) == N_POSITIONS
    assert set(document["distances"]) == {"native", "dequantized"}
    assert document["distances"]["native"]["mean_kl"] == 0.0
    assert "reference: native (the model as given)" in choice.sentence()


def _evaluate_without_copy(*, optional: bool) -> Evaluated:
    native, _ = _references()

    def run_reference(n: int, model: Path, prompt: list[int]) -> tuple[list[int], np.ndarray, dict[str, Any]]:
        return list(range(N_POSITIONS)), native, {"settings": {}}

    def refuse() -> FloatCopy:
        raise BadInput("model.gguf is one part of a model split into 2 files", next_step="merge the parts")

    return evaluate(
        ("native", "dequantized"),
        model=Path("/models/model.gguf"),
        prompt=[0],
        max_tokens=4,
        run_reference=run_reference,
        make_copy=refuse,
        phase=lambda name: contextlib.nullcontext(),
        copy_optional=optional,
    )


def test_auto_without_a_float_copy_judges_with_the_model_as_given_and_says_why() -> None:
    evaluated = _evaluate_without_copy(optional=True)
    assert tuple(evaluated.logits) == ("native",) and evaluated.float_copy is None
    native, _ = _references()
    choice, thresholds, _ = judge("auto", evaluated, native, base=QUANTIZED, float_limit=DEFAULT_KL_MAX_FLOAT)
    assert choice.followed == "native" and "split into 2 files" in choice.why
    assert thresholds.kl_max == DEFAULT_KL_MAX_QUANTIZED


def test_asked_for_the_float_copy_a_copy_that_cannot_be_made_is_the_error() -> None:
    with pytest.raises(BadInput, match="split into 2 files"):
        _evaluate_without_copy(optional=False)


def test_kl_per_position_reads_memory_mapped_logits_a_block_at_a_time_and_hands_the_pages_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitnet_crossval.crossval import references
    from bitnet_crossval.util import npy_rows

    native, dequantized = _references(seed=3)
    maps = []
    for name, values in (("native", native), ("dequantized", dequantized)):
        np.save(tmp_path / f"{name}.npy", values.astype(np.float32))
        maps.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    released: list[tuple[int, int, int]] = []

    def spy(array: Any, start: int, stop: int) -> None:
        released.append((id(array), start, stop))
        npy_rows.release_rows(array, start, stop)

    monkeypatch.setattr(references, "rows_per_block", lambda n_cols: 5)
    monkeypatch.setattr(references, "release_rows", spy)
    kl = kl_per_position(maps[0], maps[1])
    in_memory = kl_per_position(native.astype(np.float32), dequantized.astype(np.float32))
    np.testing.assert_array_equal(kl, in_memory)
    # Every row of both files is handed back, block after block, as the pass goes (not at the end).
    for mapped in maps:
        blocks = [(start, stop) for owner, start, stop in released if owner == id(mapped)]
        assert blocks == [(start, min(N_POSITIONS, start + 5)) for start in range(0, N_POSITIONS, 5)]
