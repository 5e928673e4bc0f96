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
    cases = run_selfcheck(fake_cache.context())

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

    (case,) = run_selfcheck(fake_cache.context(), architectures=("llama",))

    assert case.fault == "norm_eps" and case.verdict == "parity" and case.found_site is None
    assert case.expected_site == "attn_norm-0"
    assert not case.caught and not case.ok
    assert case.to_json()["ok"] is False


@pytest.mark.parametrize("weights", ["Q4_0", "Q8_0"])
def test_every_fault_is_caught_and_located_on_quantised_weights(fake_cache: FakeCache, weights: str) -> None:
    cases = run_selfcheck(fake_cache.context(), architectures=("llama",), weights=weights)

    assert [c.fault for c in cases] == cases_for("llama")
    assert [(c.fault, c.verdict, c.found_site) for c in cases if not c.ok] == []


def test_a_model_of_ones_own_is_checked_with_its_architecture_faults(fake_cache: FakeCache) -> None:
    from bitnet_crossval.crossval.models import parse_model, resolve_model

    ctx = fake_cache.context()
    path = resolve_model(parse_model("synthetic:gemma3:Q4_0"), cache=ctx.cache, env=ctx.env, source_dirs=[])
    cases = run_selfcheck(ctx, model=parse_model(str(path)))

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

    clean, foreign = run_selfcheck(ctx, model=parse_model(str(path)))

    assert clean.ok and clean.verdict == "parity"
    assert foreign.fault == "missing_qk_norm" and not foreign.applies and foreign.ok
    assert foreign.verdict == "does not apply" and "gemma3" in foreign.description
    assert foreign.to_json()["applies"] is False
    # On the synthetic models every fault listed must apply: one that does not is the checker's error.
    with pytest.raises(BadInput, match="missing_qk_norm"):
        run_selfcheck(ctx, architectures=("llama",))
