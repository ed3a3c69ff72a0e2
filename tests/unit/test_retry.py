from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chervil import DeadReason, Discard, Retry
from chervil.retry import Dead, RetryAt, decide


def test_backoff_doubles_and_is_capped_without_jitter() -> None:
    policy = Retry(max_attempts=10, backoff=2.0, max_delay=30.0, jitter=0.0)
    assert [policy.backoff_delay(a) for a in range(1, 7)] == [2, 4, 8, 16, 30, 30]


@given(attempt=st.integers(1, 60), backoff=st.floats(0, 100), max_delay=st.floats(0, 10_000),
       jitter=st.floats(0, 1), seed=st.integers(0, 2**32))
def test_backoff_stays_within_bounds(attempt: int, backoff: float, max_delay: float,
                                     jitter: float, seed: int) -> None:
    policy = Retry(max_attempts=100, backoff=backoff, max_delay=max_delay, jitter=jitter)
    delay = policy.backoff_delay(attempt, random.Random(seed))
    full = min(max_delay, backoff * 2.0 ** (attempt - 1))
    assert full * (1 - jitter) - 1e-9 <= delay <= full + 1e-9


def test_jitter_spreads_retries() -> None:
    policy = Retry(max_attempts=5, backoff=10.0, jitter=0.5)
    rng = random.Random(1)
    delays = {round(policy.backoff_delay(2, rng), 6) for _ in range(50)}
    assert len(delays) > 40 and min(delays) >= 10.0 and max(delays) <= 20.0


def test_decide_retries_until_attempts_run_out() -> None:
    policy = Retry(max_attempts=3, backoff=1.0, jitter=0.0)
    assert decide(policy, 1, ValueError()) == RetryAt(1.0)
    assert decide(policy, 2, ValueError()) == RetryAt(2.0)
    assert decide(policy, 3, ValueError()) == Dead(DeadReason.RETRIES_EXHAUSTED)


def test_decide_per_exception_rules() -> None:
    policy = Retry(max_attempts=5, on=(ConnectionError,), never_on=(ConnectionRefusedError,))
    assert isinstance(decide(policy, 1, ConnectionResetError()), RetryAt)
    assert decide(policy, 1, ConnectionRefusedError()) == Dead(DeadReason.NOT_RETRYABLE)
    assert decide(policy, 1, KeyError()) == Dead(DeadReason.NOT_RETRYABLE)


def test_task_requests() -> None:
    policy = Retry(max_attempts=3, on=(KeyError,), jitter=0.0)
    assert decide(policy, 1, Retry(delay=42)) == RetryAt(42)  # honoured even if not in on=
    assert decide(policy, 3, Retry(delay=42)) == Dead(DeadReason.RETRIES_EXHAUSTED)
    assert decide(policy, 1, Discard("no such user")) == Dead(DeadReason.DISCARDED)
    assert decide(policy, 1, None, DeadReason.TIME_LIMIT) == RetryAt(policy.backoff_delay(1))
    assert decide(policy, 3, None, DeadReason.TIME_LIMIT) == Dead(DeadReason.TIME_LIMIT)


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"backoff": -1}, {"jitter": 1.5},
                                    {"delay": -3}])
def test_bad_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Retry(**kwargs)  # type: ignore[arg-type]
