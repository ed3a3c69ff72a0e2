"""Retry policy and the pure decision: what happens to a job after a failed attempt.

``Retry`` plays two parts, as in the API users write::

    @app.task(retry=Retry(max_attempts=5, backoff=2.0, max_delay=600))   # a policy
    def charge(order_id: int) -> None:
        if gateway_busy():
            raise Retry(delay=30)                                         # a request

Raised from a task, it asks for another attempt after ``delay`` seconds (the policy's
backoff when ``delay`` is None), still bounded by ``max_attempts``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .job import DeadReason


class Retry(Exception):
    """Retry policy, and the exception a task raises to ask for another attempt."""

    def __init__(self, delay: float | None = None, *, max_attempts: int = 3,
                 backoff: float = 1.0, max_delay: float = 600.0, jitter: float = 0.5,
                 on: tuple[type[BaseException], ...] = (Exception,),
                 never_on: tuple[type[BaseException], ...] = ()) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if backoff < 0 or max_delay < 0 or (delay is not None and delay < 0):
            raise ValueError("backoff, max_delay and delay must be zero or more seconds")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter is a fraction between 0 and 1, got {jitter}")
        super().__init__(f"retry requested (delay={delay})")
        self.delay = delay
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_delay = max_delay
        self.jitter = jitter
        self.on = on
        self.never_on = never_on

    def __repr__(self) -> str:
        return (f"Retry(delay={self.delay}, max_attempts={self.max_attempts}, "
                f"backoff={self.backoff}, max_delay={self.max_delay}, jitter={self.jitter})")

    def backoff_delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Exponential delay before the attempt after ``attempt``, capped, with jitter.

        ``backoff * 2**(attempt-1)``, capped at ``max_delay``, then up to ``jitter`` of it
        taken off at random so retries of many jobs spread out.
        """
        base = min(self.max_delay, self.backoff * (2.0 ** max(0, attempt - 1)))
        if self.jitter and base > 0:
            base -= base * self.jitter * (rng or random).random()
        return base

    def retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on) and not isinstance(exc, self.never_on)


class Discard(Exception):
    """Raised by a task: do not try again; the job goes dead with reason ``discarded``."""

    def __init__(self, reason: str = "discarded by the task") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RetryAt:
    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    reason: DeadReason


Decision = RetryAt | Dead


def decide(policy: Retry, attempts: int, exc: BaseException | None,
           reason_if_final: DeadReason = DeadReason.RETRIES_EXHAUSTED,
           rng: random.Random | None = None) -> Decision:
    """After failed attempt number ``attempts``: retry after a delay, or dead with a reason.

    ``exc`` is what the task raised (None for a time limit or a lost worker).
    """
    if isinstance(exc, Discard):
        return Dead(DeadReason.DISCARDED)
    if exc is not None and not isinstance(exc, Retry) and not policy.retryable(exc):
        return Dead(DeadReason.NOT_RETRYABLE)
    if attempts >= policy.max_attempts:
        return Dead(reason_if_final)
    if isinstance(exc, Retry) and exc.delay is not None:
        return RetryAt(exc.delay)
    return RetryAt(policy.backoff_delay(attempts, rng))
