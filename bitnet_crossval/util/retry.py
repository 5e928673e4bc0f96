"""Retrying an operation that failed for a transient (network) reason.

Exponential backoff with "equal jitter" (half the step fixed, half random), each delay capped
and the total sleep bounded by a budget, so a network outage of about a minute is survived
while a dead host fails in bounded time (cibuildwheel ``util/file.py::download``, cargo
``util/network/retry.rs``). Only errors the caller calls transient are retried; Ctrl-C and
``SystemExit`` never are (pip ``tests/unit/test_utils_retry.py``), and the last error is the
one re-raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from bitnet_crossval.errors import SuiteError
from bitnet_crossval.util import ui
from bitnet_crossval.util.envnum import env_float, env_int

T = TypeVar("T")

RETRIES_ENV = "BITNET_NET_RETRIES"
BUDGET_ENV = "BITNET_NET_RETRY_BUDGET"
TIMEOUT_ENV = "BITNET_NET_TIMEOUT"
DEFAULT_TIMEOUT = 30.0

_REASON_MAX_CHARS = 160


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry. ``attempts`` counts every try, the first included."""

    attempts: int = 4
    base_delay: float = 1.0
    max_delay: float = 16.0
    budget: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0 or self.budget < 0:
            raise ValueError(f"invalid retry policy: {self}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RetryPolicy:
        """The default policy with ``BITNET_NET_RETRIES`` (attempts, at least 1) and
        ``BITNET_NET_RETRY_BUDGET`` (seconds of total sleep, at least 0) applied."""
        attempts = env_int(
            env, RETRIES_ENV, default=cls.attempts, minimum=1, example="4 (1 turns retries off)", unit="attempts"
        )
        budget = env_float(env, BUDGET_ENV, default=cls.budget, example="60")
        return cls(attempts=attempts, budget=budget)


def net_timeout(env: Mapping[str, str]) -> float:
    """Seconds a network operation may stall: ``BITNET_NET_TIMEOUT``, else 30."""
    return env_float(env, TIMEOUT_ENV, default=DEFAULT_TIMEOUT, exclusive_minimum=True, example="30")


def backoff_delay(policy: RetryPolicy, retry_number: int, rand: Callable[[], float]) -> float:
    """The sleep before retry ``retry_number`` (1-based): equal jitter over a capped exponential
    step, so consecutive delays never shrink while the step grows."""
    step = min(policy.max_delay, policy.base_delay * 2.0 ** (retry_number - 1))
    return step / 2.0 + rand() * step / 2.0


def short_reason(exc: BaseException) -> str:
    """The first line of an error's message, cut to a length that fits a status line."""
    text = exc.message if isinstance(exc, SuiteError) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if len(first) > _REASON_MAX_CHARS:
        first = first[: _REASON_MAX_CHARS - 3] + "..."
    return first


def with_retries(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] | None = None,
) -> T:
    """Call ``fn`` until it returns, retrying transient failures within ``policy``.

    ``what`` completes the sentence "network error while ...". Errors that are not
    transient, and the error of the last allowed attempt, propagate unchanged.
    """
    if rand is None:
        import random  # only when something fails: keeps start-up quick

        rand = random.random
    slept = 0.0
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:  # BaseException (Ctrl-C, SystemExit) is never retried
            attempts_left = policy.attempts - attempt
            budget_left = policy.budget - slept
            if attempts_left <= 0 or budget_left <= 0.0 or not is_transient(exc):
                raise
            delay = min(backoff_delay(policy, attempt, rand), budget_left)
            ui.warn(f"network error while {what}: {short_reason(exc)}; retrying in {delay:.1f}s ({attempts_left} left)")
            sleep(delay)
            slept += delay
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover (attempts >= 1)
