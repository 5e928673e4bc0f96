from __future__ import annotations

import random

import pytest

from bitnet_crossval.errors import BadInput, NetworkError
from bitnet_crossval.util.retry import BUDGET_ENV, RETRIES_ENV, RetryPolicy, backoff_delay, with_retries


def is_network(exc: BaseException) -> bool:
    return isinstance(exc, NetworkError)


class Flaky:
    """Fails with a fresh error from ``make_error`` ``failures`` times, then returns "ok"."""

    def __init__(self, failures: int, make_error=lambda n: NetworkError(f"connection refused #{n}")):
        self.failures = failures
        self.make_error = make_error
        self.calls = 0
        self.raised: list[BaseException] = []

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            error = self.make_error(self.calls)
            self.raised.append(error)
            raise error
        return "ok"


def run(fn, policy: RetryPolicy, rand=random.random) -> tuple[list[float], object]:
    sleeps: list[float] = []
    result = with_retries(fn, policy=policy, is_transient=is_network, what="fetching x", sleep=sleeps.append, rand=rand)
    return sleeps, result


@pytest.mark.parametrize("seed", range(5))
def test_delays_grow_and_are_capped(seed: int) -> None:
    policy = RetryPolicy(attempts=8, base_delay=1.0, max_delay=16.0, budget=1000.0)
    rng = random.Random(seed)
    sleeps: list[float] = []
    flaky = Flaky(failures=100)
    with pytest.raises(NetworkError):
        with_retries(flaky, policy=policy, is_transient=is_network, what="x", sleep=sleeps.append, rand=rng.random)
    assert len(sleeps) == 7
    # Steps 1, 2, 4, 8, 16, then capped at 16; each delay is half its step plus up to another half.
    growing, capped = sleeps[:5], sleeps[5:]
    assert growing == sorted(growing), "equal jitter never lets a delay shrink while the step grows"
    assert growing[-1] >= 8.0 * growing[0]
    assert all(8.0 <= d <= 16.0 for d in capped)
    assert max(sleeps) <= policy.max_delay


def test_total_sleep_never_exceeds_budget_and_stops_when_spent() -> None:
    policy = RetryPolicy(attempts=20, base_delay=1.0, max_delay=16.0, budget=60.0)
    flaky = Flaky(failures=100)
    sleeps: list[float] = []
    with pytest.raises(NetworkError):
        with_retries(flaky, policy=policy, is_transient=is_network, what="x", sleep=sleeps.append, rand=lambda: 1.0)
    # Full steps 1+2+4+8+16+16 = 47, then 13 s is all that is left of the budget.
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 16.0, 13.0]
    assert sum(sleeps) == pytest.approx(60.0)
    assert flaky.calls == len(sleeps) + 1 < policy.attempts


def test_exactly_attempts_calls_and_last_error_reraised() -> None:
    flaky = Flaky(failures=100)
    sleeps: list[float] = []
    with pytest.raises(NetworkError) as info:
        with_retries(flaky, policy=RetryPolicy(attempts=4), is_transient=is_network, what="x", sleep=sleeps.append)
    assert flaky.calls == 4
    assert len(sleeps) == 3
    assert info.value is flaky.raised[-1]
    assert "#4" in info.value.message


def test_success_after_transient_failures_returns_value_and_warns(capsys: pytest.CaptureFixture[str]) -> None:
    flaky = Flaky(failures=2)
    sleeps, result = run(flaky, RetryPolicy(attempts=4), rand=lambda: 0.0)
    assert result == "ok"
    assert flaky.calls == 3
    assert sleeps == [0.5, 1.0]
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: network error while fetching x: connection refused #1; retrying in 0.5s (3 left)",
        "warning: network error while fetching x: connection refused #2; retrying in 1.0s (2 left)",
    ]


@pytest.mark.parametrize(
    "error",
    [BadInput("repository not found"), ValueError("bug"), OSError(13, "Permission denied")],
    ids=["bad-input", "value-error", "os-error"],
)
def test_non_network_error_gets_one_attempt(error: Exception, capsys: pytest.CaptureFixture[str]) -> None:
    flaky = Flaky(failures=100, make_error=lambda n: error)
    sleeps: list[float] = []
    with pytest.raises(type(error)) as info:
        with_retries(flaky, policy=RetryPolicy(), is_transient=is_network, what="x", sleep=sleeps.append)
    assert info.value is error
    assert flaky.calls == 1
    assert sleeps == []
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupts_are_never_retried(interrupt: type[BaseException]) -> None:
    flaky = Flaky(failures=100, make_error=lambda n: interrupt())
    sleeps: list[float] = []
    with pytest.raises(interrupt):
        # Even a predicate that calls everything transient must not see Ctrl-C.
        with_retries(flaky, policy=RetryPolicy(), is_transient=lambda e: True, what="x", sleep=sleeps.append)
    assert flaky.calls == 1
    assert sleeps == []


def test_single_attempt_policy_does_not_retry() -> None:
    flaky = Flaky(failures=1)
    with pytest.raises(NetworkError):
        run(flaky, RetryPolicy(attempts=1))
    assert flaky.calls == 1


def test_zero_budget_does_not_retry() -> None:
    flaky = Flaky(failures=1)
    with pytest.raises(NetworkError):
        run(flaky, RetryPolicy(budget=0.0))
    assert flaky.calls == 1


@pytest.mark.parametrize(
    ("retry_number", "rand", "expected"),
    [(1, 0.0, 0.5), (1, 1.0, 1.0), (3, 0.5, 3.0), (5, 1.0, 16.0), (9, 0.0, 8.0), (9, 1.0, 16.0)],
)
def test_backoff_delay_is_equal_jitter_over_capped_step(retry_number: int, rand: float, expected: float) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=16.0)
    assert backoff_delay(policy, retry_number, lambda: rand) == pytest.approx(expected)


def test_policy_from_env_defaults_and_overrides() -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy(attempts=4, base_delay=1.0, max_delay=16.0, budget=60.0)
    policy = RetryPolicy.from_env({RETRIES_ENV: " 2 ", BUDGET_ENV: "7.5"})
    assert (policy.attempts, policy.budget) == (2, 7.5)
    assert RetryPolicy.from_env({RETRIES_ENV: "", BUDGET_ENV: ""}) == RetryPolicy()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (RETRIES_ENV, "0"),
        (RETRIES_ENV, "-3"),
        (RETRIES_ENV, "many"),
        (RETRIES_ENV, "2.5"),
        (BUDGET_ENV, "-1"),
        (BUDGET_ENV, "soon"),
        (BUDGET_ENV, "nan"),
        (BUDGET_ENV, "inf"),
    ],
)
def test_policy_from_env_rejects_bad_values_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(BadInput) as info:
        RetryPolicy.from_env({name: value})
    assert info.value.exit_code == 6
    assert name in info.value.message
    assert "\n" not in info.value.message


def test_policy_rejects_impossible_values() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
