"""Which reference a candidate on a quantised model follows, and the limit each position is judged at.

The two references are made here as llama.cpp makes them on a quantised model: ``dequantized``
is exact float arithmetic, ``native`` the same logits moved by a rounding noise that differs from
position to position. The candidates: one equal to each reference, and float engines with a small
bug that the choice of reference must not hide.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
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

    def generate(model: Path, prompt: list[int], n: int) -> list[int]:
        return list(range(N_POSITIONS))

    def run_logits(model: Path, tokens: list[int], stop: threading.Event | None) -> tuple[np.ndarray, dict[str, Any]]:
        return native, {"settings": {}}

    def refuse() -> FloatCopy:
        raise BadInput("model.gguf is one part of a model split into 2 files", next_step="merge the parts")

    return evaluate(
        ("native", "dequantized"),
        model=Path("/models/model.gguf"),
        prompt=[0],
        max_tokens=4,
        generate=generate,
        run_logits=run_logits,
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


# --- the two evaluations, side by side or one after the other ---

MODEL, COPY = Path("/models/model.gguf"), Path("/copies/model-f32.gguf")
WAIT = 10.0  # seconds an event is waited for: never reached when the code is right


def _copy() -> FloatCopy:
    return FloatCopy(
        path=COPY,
        float_type="F32",
        size_bytes=0,
        seconds=0.0,
        cached=True,
        reason="",
        source=MODEL,
        source_sha256="0" * 64,
        backend="llama",
        backend_commit="0" * 12,
        by_backend=0,
        by_decoder=0,
    )


class _Evaluations:
    """The two evaluations as events: which started, which ended, which was asked to stop."""

    def __init__(self, *, native_waits_for_copy: bool = False, fail: Path | None = None) -> None:
        self.native, self.dequantized = _references()
        self.started = {MODEL: threading.Event(), COPY: threading.Event()}
        self.ended = {MODEL: threading.Event(), COPY: threading.Event()}
        self.stopped = threading.Event()
        self.copy_running_at_native_end = False
        self.native_waits_for_copy = native_waits_for_copy
        self.fail = fail

    def run_logits(self, model: Path, tokens: list[int], stop: threading.Event | None) -> tuple[np.ndarray, Any]:
        self.started[model].set()
        try:
            if model == MODEL:
                if self.native_waits_for_copy:
                    assert self.started[COPY].wait(WAIT), "the float copy did not start while the model ran"
                    self.copy_running_at_native_end = not self.ended[COPY].is_set()
                if self.fail == MODEL:
                    raise BadInput("the model's evaluation failed", next_step="look at its log")
                return self.native, {"settings": {"which": "native"}}
            if self.fail == COPY:
                raise BadInput("the copy's evaluation failed", next_step="look at its log")
            # Stays until it is called off, as a shim still computing would.
            if self.fail == MODEL and stop is not None and stop.wait(WAIT):
                self.stopped.set()
                raise BadInput("interrupted", next_step="")
            if self.native_waits_for_copy:
                self.ended[MODEL].wait(WAIT)
            return self.dequantized, {"settings": {"which": "dequantized"}}
        finally:
            self.ended[model].set()

    def evaluate(self, *, together: bool) -> Evaluated:
        seen: list[str] = []

        @contextlib.contextmanager
        def phase(name: str) -> Any:
            seen.append(name)
            yield

        return evaluate(
            ("native", "dequantized"),
            model=MODEL,
            prompt=[0, 1],
            max_tokens=N_POSITIONS - 2,
            generate=lambda model, prompt, n: [*prompt, *range(2, 2 + n)],
            run_logits=self.run_logits,
            make_copy=_copy,
            phase=phase,
            side_by_side=lambda copy: together,
        )


def test_the_float_copy_is_evaluated_beside_the_model_when_the_machine_allows() -> None:
    evaluations = _Evaluations(native_waits_for_copy=True)
    evaluated = evaluations.evaluate(together=True)
    assert evaluations.copy_running_at_native_end  # both were running at once
    assert evaluated.side_by_side
    assert evaluated.tokens == list(range(N_POSITIONS))
    assert evaluated.logits["native"] is evaluations.native
    assert evaluated.logits["dequantized"] is evaluations.dequantized
    assert evaluated.settings == {"settings": {"which": "native"}}  # the model as given's facts
    assert evaluated.models == {"native": MODEL, "dequantized": COPY}


def test_one_after_the_other_when_the_machine_does_not_allow() -> None:
    evaluations = _Evaluations()
    order: list[Path] = []
    run = evaluations.run_logits

    def recorded(model: Path, tokens: list[int], stop: threading.Event | None) -> tuple[np.ndarray, Any]:
        order.append(model)
        assert model == MODEL or evaluations.ended[MODEL].is_set()
        return run(model, tokens, stop)

    evaluations.run_logits = recorded  # type: ignore[method-assign]
    evaluated = evaluations.evaluate(together=False)
    assert order == [MODEL, COPY] and not evaluated.side_by_side
    assert evaluated.logits["dequantized"] is evaluations.dequantized


def test_a_failing_evaluation_of_the_model_calls_the_copys_off_and_is_the_error() -> None:
    evaluations = _Evaluations(native_waits_for_copy=True, fail=MODEL)
    with pytest.raises(BadInput, match="the model's evaluation failed"):
        evaluations.evaluate(together=True)
    assert evaluations.stopped.is_set()  # the copy's evaluation was told to stop ...
    assert evaluations.ended[COPY].is_set()  # ... and was waited for


def test_a_failing_evaluation_of_the_copy_is_the_error_once_the_model_is_done() -> None:
    evaluations = _Evaluations(fail=COPY)
    with pytest.raises(BadInput, match="the copy's evaluation failed"):
        evaluations.evaluate(together=True)
    assert evaluations.ended[MODEL].is_set()


def test_the_preparation_runs_while_the_continuation_is_generated_and_ends_before_the_evaluations() -> None:
    evaluations = _Evaluations()
    preparing, prepared = threading.Event(), threading.Event()

    def generate(model: Path, prompt: list[int], n: int) -> list[int]:
        assert preparing.wait(WAIT), "the preparation did not start while the continuation was generated"
        return [*prompt, *range(2, 2 + n)]

    def prepare(stop: threading.Event) -> None:
        preparing.set()
        time.sleep(0.05)
        prepared.set()

    run = evaluations.run_logits

    def run_logits(model: Path, tokens: list[int], stop: threading.Event | None) -> tuple[np.ndarray, Any]:
        assert prepared.is_set(), "an evaluation started before the preparation ended"
        return run(model, tokens, stop)

    evaluated = evaluate(
        ("native", "dequantized"),
        model=MODEL,
        prompt=[0, 1],
        max_tokens=N_POSITIONS - 2,
        generate=generate,
        run_logits=run_logits,
        make_copy=_copy,
        phase=lambda name: contextlib.nullcontext(),
        side_by_side=lambda copy: True,
        beside_generation=prepare,
    )
    assert evaluated.tokens == list(range(N_POSITIONS))


def test_a_failing_generation_stops_the_preparation_and_is_the_error() -> None:
    stopped = threading.Event()
    started = threading.Event()

    def generate(model: Path, prompt: list[int], n: int) -> list[int]:
        assert started.wait(WAIT)
        raise BadInput("the reference could not generate", next_step="look at its log")

    def prepare(stop: threading.Event) -> None:
        started.set()
        if stop.wait(WAIT):
            stopped.set()

    with pytest.raises(BadInput, match="could not generate"):
        evaluate(
            ("native",),
            model=MODEL,
            prompt=[0, 1],
            max_tokens=4,
            generate=generate,
            run_logits=lambda model, tokens, stop: (np.zeros((6, 4), np.float32), {}),
            make_copy=_copy,
            phase=lambda name: contextlib.nullcontext(),
            beside_generation=prepare,
        )
    assert stopped.is_set()
