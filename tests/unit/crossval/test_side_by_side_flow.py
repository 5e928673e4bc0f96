"""What a run does at once, on the fake reference shim: the float copy evaluated beside the model
as given when the machine has two cores and the memory, and the built-in engine dequantising its
weights beside the references' run. Either way the report's figures are the same."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from bitnet_crossval.context import SuiteContext
from bitnet_crossval.crossval import CrossvalRequest, CrossvalResult, parse_candidate, parse_model, run_crossval
from bitnet_crossval.crossval import run as run_module
from bitnet_crossval.crossval.candidates import Prepares, ReferenceFacts
from bitnet_crossval.crossval.candidates.numpy_engine import NumpyCandidate
from bitnet_crossval.crossval.engine import EngineOptions
from bitnet_crossval.crossval.models import resolve_model
from tests.unit.crossval.fake_reference import FakeCache

pytestmark = pytest.mark.usefixtures("one_blas_thread_here")

QUANTISED = "synthetic:llama:Q4_0"
GB = 1 << 30


def _files(tmp_path: Path, model_bytes: int, copy_bytes: int) -> tuple[Path, Path]:
    model, copy = tmp_path / "model.gguf", tmp_path / "copy.gguf"
    for path, size in ((model, model_bytes), (copy, copy_bytes)):
        with path.open("wb") as handle:
            handle.truncate(size)  # sparse: only the size matters
    return model, copy


@pytest.mark.parametrize(
    ("threads", "cores", "memory", "together"),
    [
        (1, 2, 8 * GB, True),
        (1, 1, 8 * GB, False),  # one core: the second would only wait for the first
        (2, 2, 8 * GB, False),  # --threads 2 each would need four
        (2, 4, 8 * GB, True),
        (1, 2, 4 * GB, False),  # 1 GB + 4 GB of files do not fit beside each other
        (1, 2, None, True),  # a system that does not say: the cores decide
    ],
)
def test_side_by_side_when_the_cores_and_the_memory_allow(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    threads: int,
    cores: int,
    memory: int | None,
    together: bool,
) -> None:
    model, copy = _files(tmp_path, 1 * GB, 4 * GB)
    monkeypatch.setattr(run_module, "available_memory", lambda: memory)
    assert run_module._references_side_by_side(threads, model, copy, cores=cores) is together


def _crossval(ctx: SuiteContext, *, cores: int = 0) -> CrossvalResult:
    request = CrossvalRequest(
        model=parse_model(QUANTISED),
        candidate=parse_candidate("numpy"),
        prompt="The quick brown fox",
        max_tokens=4,
        cores=cores,
    )
    return run_crossval(request, ctx)


def _rows(result: CrossvalResult) -> str:
    """Every figure of every position, as JSON text: equal text, equal to the last bit."""
    return json.dumps([row.to_json() for row in result.rows])


def test_the_report_is_the_same_side_by_side_or_one_after_the_other(
    fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "usable_cores", lambda: 2)
    together = _crossval(fake_cache.context())
    alone = _crossval(fake_cache.context(), cores=1)  # --cores 1
    assert together.reference["float_copy"]["evaluated_side_by_side"] is True
    assert alone.reference["float_copy"]["evaluated_side_by_side"] is False
    assert together.verdict == alone.verdict == "parity"
    same_rows = _rows(together) == _rows(alone)  # one boolean: pytest's diff of long texts is slow
    assert same_rows
    assert together.references is not None and alone.references is not None
    assert together.references.kl_by_reference == alone.references.kl_by_reference
    assert together.references.noise == alone.references.noise
    # Two cores: the engine dequantised its weights while the continuation was generated; told
    # one: on first use, as it evaluated.
    assert "candidate_prepare" in together.timings and "candidate_prepare" not in alone.timings


def test_a_preparation_that_fails_changes_nothing_the_run_reports(
    fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = fake_cache.context()
    monkeypatch.setattr(run_module, "usable_cores", lambda: 2)
    prepared = _crossval(ctx)
    calls: list[bool] = []

    def fails(self: NumpyCandidate, stop: threading.Event) -> None:
        calls.append(True)
        raise MemoryError("no room for the weights")

    monkeypatch.setattr(NumpyCandidate, "prepare", fails)
    failed = _crossval(ctx)
    assert calls  # it was asked to prepare, and failed
    assert failed.verdict == prepared.verdict == "parity"
    same_rows = _rows(failed) == _rows(prepared)
    assert same_rows


@pytest.mark.parametrize(
    ("threads", "cores", "memory", "prepares"),
    [
        (1, 2, 8 * GB, True),
        (1, 1, 8 * GB, False),  # the generation takes the only core
        (2, 2, 8 * GB, False),
        (1, 2, 600 << 20, False),  # twice the weights and the model do not fit
        (1, 2, None, True),
    ],
)
def test_the_engine_prepares_beside_the_generation_when_a_core_and_the_memory_are_free(
    fake_cache: FakeCache,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    cores: int,
    memory: int | None,
    prepares: bool,
) -> None:
    candidate = _candidate(fake_cache)
    monkeypatch.setattr(candidate.engine, "preload_bytes", lambda: 400 << 20)
    monkeypatch.setattr(run_module, "available_memory", lambda: memory)
    model = candidate.engine.model.path
    assert (run_module._prepare_beside_generation(threads, candidate, model, cores=cores) is candidate) is prepares


def test_preload_bytes_are_what_the_preload_holds(fake_cache: FakeCache) -> None:
    candidate = _candidate(fake_cache)
    candidate.prepare(threading.Event())
    held = sum(array.nbytes for array in candidate.engine.model._cache.values())
    assert candidate.prepare_bytes() == held > 0


def _candidate(fake_cache: FakeCache) -> NumpyCandidate:
    ctx = fake_cache.context()
    path = resolve_model(parse_model(QUANTISED), cache=ctx.cache, env=ctx.env, source_dirs=[])
    return NumpyCandidate(path, EngineOptions(output_weights="stream"))


def test_the_engine_prepares_by_dequantising_its_weights(fake_cache: FakeCache) -> None:
    candidate = _candidate(fake_cache)
    assert isinstance(candidate, Prepares)
    cached = candidate.engine.model._cache
    assert not cached
    candidate.prepare(threading.Event())
    assert "blk.0.attn_q.weight" in cached and "output_norm.weight" in cached
    assert "token_embd.weight" not in cached  # streamed: read once per run, never held


def test_a_stop_set_before_the_engine_prepares_leaves_the_weights_to_first_use(fake_cache: FakeCache) -> None:
    candidate = _candidate(fake_cache)
    stop = threading.Event()
    stop.set()
    candidate.prepare(stop)
    assert not candidate.engine.model._cache


def test_following_an_f16_v_cache_keeps_the_prepared_weights(fake_cache: FakeCache) -> None:
    candidate = _candidate(fake_cache)
    candidate.prepare(threading.Event())
    followed = candidate.follow(ReferenceFacts(kv_type_v="f16"))
    assert isinstance(followed, NumpyCandidate) and followed is not candidate
    assert followed.engine.options.kv_cache == "f16"
    assert followed.engine.model is candidate.engine.model  # the same file, its weights dequantised once
