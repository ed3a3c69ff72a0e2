"""Run one reserved job and turn what happened into an :class:`Outcome`.

No loop and no broker I/O here: the worker (or ``chervil.testing.drain``) reserves, calls
:func:`execute`, and hands the outcome to ``broker.finish``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import traceback
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from .brokers.base import Outcome
from .clock import Clock
from .errors import DecodeError
from .job import DeadReason, ErrorInfo, Job, JobStatus, decode_payload
from .redact import redact_text
from .retry import Dead, Retry, RetryAt, decide
from .task import Task


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a running task may know about its job (``chervil.current_job()``)."""

    id: str
    task: str
    attempt: int
    max_attempts: int
    lease_token: str | None = None  # this attempt's lease (for audit logs)

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts: pass it to payment APIs and the like."""
        return self.id


# the job being run: its JobContext is made only when asked for (most tasks never do)
_current: contextvars.ContextVar[Job | None] = contextvars.ContextVar("chervil_job", default=None)
_loops = threading.local()


def current_job() -> JobContext | None:
    """The job being run by this thread, or None outside a task."""
    job = _current.get()
    if job is None:
        return None
    return JobContext(job.id, job.task, job.attempts, job.max_attempts, job.lease_token)


def _run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    loop: asyncio.AbstractEventLoop | None = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = _loops.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coro)


def error_of(exc: BaseException, secrets: list[Any]) -> ErrorInfo:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ErrorInfo(type(exc).__qualname__, redact_text(str(exc), secrets)[:2000],
                     redact_text(tb, secrets)[-8000:])


def dead(job: Job, reason: DeadReason, message: str) -> Outcome:
    return Outcome(job.id, job.lease_token or "", JobStatus.DEAD, dead_reason=reason.value,
                   error=ErrorInfo(reason.value, message))


def failure(task: Task[Any, Any], job: Job, exc: BaseException | None, error: ErrorInfo,
            now: float, final_reason: DeadReason = DeadReason.RETRIES_EXHAUSTED) -> Outcome:
    """Apply the task's retry policy to a failed attempt."""
    decision = decide(task.options.retry, job.attempts, exc, final_reason)
    if isinstance(decision, RetryAt):
        return Outcome(job.id, job.lease_token or "", JobStatus.SCHEDULED,
                       retry_at=now + decision.delay, error=error)
    assert isinstance(decision, Dead)
    return Outcome(job.id, job.lease_token or "", JobStatus.DEAD,
                   dead_reason=decision.reason.value, error=error)


def execute(task: Task[Any, Any] | None, job: Job, clock: Clock, payload_limit: int,
            caught: list[BaseException] | None = None) -> Outcome:
    """Decode, bind, call and encode the outcome of one attempt of ``job``.

    The task's exception, if any, is appended to ``caught`` (for test helpers).
    """
    if task is None:
        return dead(job, DeadReason.UNKNOWN_TASK,
                    f"no worker runs task {job.task!r}; start one that has it, then requeue")
    try:
        args, kwargs = decode_payload(job.payload, payload_limit)
    except DecodeError as exc:
        reason = (DeadReason.PAYLOAD_TOO_LARGE if "exceeds" in str(exc)
                  else DeadReason.DECODE_ERROR)
        return dead(job, reason, f"{exc} ({job.payload_digest()})")
    try:
        task.binder.check(args, kwargs)
    except TypeError as exc:
        return dead(job, DeadReason.BAD_ARGUMENTS,
                    f"arguments no longer bind to {task.name}{task.signature}: {exc}")
    secrets = _secrets(task, args, kwargs)
    token = _current.set(job)
    try:
        value = task.fn(*args, **kwargs)
        if task.is_async:
            value = _run_coroutine(value)
        result = (json.dumps(value, separators=(",", ":"), allow_nan=False)
                  if task.options.store_result else None)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        if caught is not None:
            caught.append(exc)
        return failure(task, job, exc, error_of(exc, secrets), clock.now())
    finally:
        _current.reset(token)
    return Outcome(job.id, job.lease_token or "", JobStatus.SUCCEEDED, result=result)


def _secrets(task: Task[Any, Any], args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    if not task.options.sensitive:
        return []
    masked_args, _ = task.redacted(args, kwargs)
    values = [a for a, m in zip(args, masked_args, strict=True) if a is not m]
    values += [v for k, v in kwargs.items() if k in task.options.sensitive]
    return values


__all__ = ["JobContext", "Retry", "current_job", "execute"]
