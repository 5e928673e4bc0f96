"""The self-check (``run_selfcheck``) on the fake reference shim: every deliberate fault of the
engine caught and located on each synthetic architecture, and a checker that would miss one
says so (a fault found elsewhere than its site: the task's exit 12 in test_tasks_flow.py). The
fake's reference is the engine without a fault, in another process, so patching the engine here
changes only the candidate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bitnet_crossval.crossval import selfcheck
from bitnet_crossval.crossval.engine import FAULTS
from bitnet_crossval.crossval.engine.graph import Run
from bitnet_crossval.crossval.selfcheck import ARCHITECTURES, cases_for, run_selfcheck
from tests.unit.crossval.fake_reference import FakeCache

if TYPE_CHECKING:
    from bitnet_crossval.context import SuiteContext
    from bitnet_crossval.crossval.request import CrossvalRequest
    from bitnet_crossval.crossval.result import CrossvalResult

pytestmark = pytest.mark.usefixtures("one_blas_thread_here")


def test_every_fault_is_caught_and_located_on_every_architecture(fake_cache: FakeCache) -> None:
    cases = run_selfcheck(fake_cache.context(), candidates=("numpy",))

    assert [(c.architecture, c.fault) for c in cases] == [(a, f) for a in ARCHITECTURES for f in cases_for(a)]
    assert {c.fault for c in cases} == {None, *FAULTS}  # every fault applies to some architecture
    not_ok = [(c.architecture, c.fault, c.verdict, c.expected_site, c.found_site) for c in cases if not c.ok]
    assert not_ok == []
    for case in cases:
        if case.fault is None:
            assert case.verdict == "parity" and case.first_failure is None and case.found_site is None
        else:
            assert case.verdict == "divergence" and case.first_failure is not None
            assert case.kl_at_first_failure is not None and case.kl_at_first_failure > 0
            assert case.found_site == case.expected_site is not None


def test_a_fault_that_changes_nothing_is_not_caught(fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck, "cases_for", lambda arch: ["norm_eps"])
    monkeypatch.setattr(Run, "faulty", lambda self, name: False)  # every fault of the candidate a no-op

    (case,) = run_selfcheck(fake_cache.context(), architectures=("llama",), candidates=("numpy",))

    assert case.fault == "norm_eps" and case.verdict == "parity" and case.found_site is None
    assert case.expected_site == "attn_norm-0"
    assert not case.caught and not case.ok
    assert case.to_json()["ok"] is False


# --- the hf candidate's cases, with the NumPy engine standing in for transformers -------------


@pytest.fixture
def hf_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers "installed", reading GGUF llama only; ``hf`` runs the NumPy engine as it is."""
    from bitnet_crossval.crossval.candidates import parse_candidate as real_parse
    from bitnet_crossval.crossval.hf import gguf_support

    monkeypatch.setattr(selfcheck, "hf_skipped", lambda: None)
    monkeypatch.setattr(
        gguf_support,
        "gguf_support",
        lambda **_: gguf_support.GgufSupport(transformers="5.0.0", architectures=frozenset({"llama"})),
    )
    monkeypatch.setattr(selfcheck, "parse_candidate", lambda text: real_parse("numpy" if text == "hf" else text))


@pytest.mark.usefixtures("hf_stand_in")
def test_hf_runs_where_transformers_reads_the_gguf_and_lists_the_rest(fake_cache: FakeCache) -> None:
    cases = run_selfcheck(fake_cache.context(), architectures=("llama", "bitnet"), candidates=("hf",))

    assert [(c.architecture, c.candidate, c.fault) for c in cases] == [("llama", "hf", None), ("bitnet", "hf", None)]
    ran, listed = cases
    assert ran.verdict == "parity" and ran.not_run is None and ran.ok
    assert listed.verdict == "not run" and listed.ok  # listed with its reason: not a failure of the checker
    assert listed.not_run == "transformers 5.0.0 cannot read GGUF models of architecture 'bitnet'"
    assert listed.to_json()["not_run"] == listed.not_run and listed.to_json()["candidate"] == "hf"
    assert ran.to_json()["not_run"] is None


@pytest.mark.usefixtures("hf_stand_in")
def test_both_candidates_by_default_numpy_first(fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck, "cases_for", lambda arch: [None])
    cases = run_selfcheck(fake_cache.context(), architectures=("llama",))
    assert [(c.candidate, c.verdict) for c in cases] == [("numpy", "parity"), ("hf", "parity")]


def test_without_the_extra_hf_is_left_out_and_said(
    fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(selfcheck, "hf_skipped", lambda: "the hf candidate needs torch, and torch is not installed")
    monkeypatch.setattr(selfcheck, "cases_for", lambda arch: [None])
    cases = run_selfcheck(fake_cache.context(), architectures=("llama",))
    assert [c.candidate for c in cases] == ["numpy"]
    selfcheck.print_selfcheck(cases)
    err = capsys.readouterr().err
    assert "the hf candidate was not run: the hf candidate needs torch" in err


@pytest.mark.parametrize("weights", ["Q4_0", "Q8_0"])
def test_every_fault_is_caught_and_located_on_quantised_weights(fake_cache: FakeCache, weights: str) -> None:
    cases = run_selfcheck(fake_cache.context(), architectures=("llama",), weights=weights, candidates=("numpy",))

    assert [c.fault for c in cases] == cases_for("llama")
    assert [(c.fault, c.verdict, c.found_site) for c in cases if not c.ok] == []


def test_a_model_of_ones_own_is_checked_with_its_architecture_faults(fake_cache: FakeCache) -> None:
    from bitnet_crossval.crossval.models import parse_model, resolve_model

    ctx = fake_cache.context()
    path = resolve_model(parse_model("synthetic:gemma3:Q4_0"), cache=ctx.cache, env=ctx.env, source_dirs=[])
    cases = run_selfcheck(ctx, model=parse_model(str(path)), candidates=("numpy",))

    assert {c.architecture for c in cases} == {"gemma3"}
    assert [c.fault for c in cases] == cases_for("gemma3")
    assert all(c.ok for c in cases)


def test_a_fault_that_cannot_apply_to_a_model_of_ones_own_is_reported_not_run(
    fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitnet_crossval.crossval.models import parse_model, resolve_model
    from bitnet_crossval.errors import BadInput

    ctx = fake_cache.context()
    path = resolve_model(parse_model("synthetic:llama"), cache=ctx.cache, env=ctx.env, source_dirs=[])
    monkeypatch.setattr(selfcheck, "cases_for", lambda arch: [None, "missing_qk_norm"])  # a gemma3 fault

    clean, foreign = run_selfcheck(ctx, model=parse_model(str(path)), candidates=("numpy",))

    assert clean.ok and clean.verdict == "parity"
    assert foreign.fault == "missing_qk_norm" and not foreign.applies and foreign.ok
    assert foreign.verdict == "does not apply" and "gemma3" in foreign.description
    assert foreign.to_json()["applies"] is False
    # On the synthetic models every fault listed must apply: one that does not is the checker's error.
    with pytest.raises(BadInput, match="missing_qk_norm"):
        run_selfcheck(ctx, architectures=("llama",), candidates=("numpy",))


def test_a_window_fault_runs_past_the_window_on_the_prompt_set(
    fake_cache: FakeCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests: list[CrossvalRequest] = []
    from bitnet_crossval.crossval.run import run_crossval as real

    def recording(request: CrossvalRequest, ctx: SuiteContext) -> CrossvalResult:
        requests.append(request)
        return real(request, ctx)

    monkeypatch.setattr(selfcheck, "run_crossval", recording)
    cases = run_selfcheck(fake_cache.context(), architectures=("gemma3",), candidates=("numpy",))

    assert all(c.ok for c in cases)
    by_fault = {r.candidate.text.partition(":")[2] or None: r for r in requests}
    window = by_fault["sliding_window"]
    # The synthetic gemma3 window is 6: the run goes 16 positions past it, on the built-in texts.
    assert (window.prompt_set, window.prompt_tokens) == ("classics", 6 + 16)
    window_case = next(c for c in cases if c.fault == "sliding_window")
    assert window_case.first_failure is not None and window_case.first_failure >= 6
    assert all(r.prompt_tokens is None and r.prompt_set is None for f, r in by_fault.items() if f != "sliding_window")
