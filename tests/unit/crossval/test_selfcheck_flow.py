"""The self-check (``run_selfcheck``) on the fake reference shim: every deliberate fault of the
engine caught and located on each synthetic architecture, and a checker that would miss one
says so (a fault found elsewhere than its site: the task's exit 12 in test_tasks_flow.py). The
fake's reference is the engine without a fault, in another process, so patching the engine here
changes only the candidate."""

from __future__ import annotations

import pytest

from bitnet_crossval.crossval import selfcheck
from bitnet_crossval.crossval.engine import FAULTS
from bitnet_crossval.crossval.engine.graph import Run
from bitnet_crossval.crossval.selfcheck import ARCHITECTURES, cases_for, run_selfcheck
from tests.unit.crossval.fake_reference import FakeCache

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
