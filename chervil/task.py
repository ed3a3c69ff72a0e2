"""``@app.task`` turns a function into a :class:`Task`; ``enqueue`` makes a :class:`Job`.

Arguments are bound against the function's signature at enqueue, in the caller: a call
that would not bind raises ``TypeError`` there, not later in a worker.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from .binding import Binder
from .brokers.base import NewJob
from .errors import ChervilError, ConfigurationError, JobNotFound, JobTimeout
from .job import Job, JobStatus, encode_payload, new_job_id
from .limits import FlowControl
from .retry import Retry

if TYPE_CHECKING:
    from .app import Chervil

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    queue: str = "default"
    priority: int = 0
    retry: Retry = field(default_factory=Retry)
    timeout: float | None = None  # hard time limit, seconds
    sensitive: frozenset[str] = frozenset()
    store_result: bool = False
    version: str | None = None
    flow: FlowControl = field(default_factory=FlowControl)


class JobFailed(ChervilError):
    """The job ended dead or cancelled; ``job`` holds its last error and reason."""

    def __init__(self, job: Job) -> None:
        err = job.last_error
        detail = f"{err.type}: {err.message}" if err else "no error recorded"
        super().__init__(f"job {job.id} ({job.task}) ended {job.status.value}"
                         f"{' (' + job.dead_reason + ')' if job.dead_reason else ''}: {detail}")
        self.job = job


class JobHandle(Generic[R]):
    """A reference to one job: its id, and ways to look at it."""

    def __init__(self, app: Chervil, job_id: str, duplicate: bool = False) -> None:
        self.app = app
        self.id = job_id
        self.duplicate = duplicate  # True when a unique key matched an existing job
        self._job: Job | None = None

    def __repr__(self) -> str:
        return f"<JobHandle {self.id}{' duplicate' if self.duplicate else ''}>"

    def refresh(self) -> Job:
        job = self.app.broker.get(self.id)
        if job is None:
            raise JobNotFound(f"no job {self.id}: it never existed or expired by retention")
        self._job = job
        return job

    def status(self) -> JobStatus:
        return self.refresh().status

    def result(self, timeout: float = 10.0, poll_seconds: float = 0.05) -> R:
        """Wait for the job to finish; its return value if the task stores results.

        Raises JobFailed if it ended dead or cancelled, JobTimeout after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        delay = min(poll_seconds, 0.005)
        while True:
            job = self.refresh()
            if job.status is JobStatus.SUCCEEDED:
                return cast(R, json.loads(job.result) if job.result is not None else None)
            if job.status.terminal:
                raise JobFailed(job)
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {self.id} is still {job.status.value} after {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, poll_seconds)


@dataclass(frozen=True, slots=True)
class PreparedJob:
    """A bound call, ready for ``app.enqueue_many``."""

    task: Task[Any, Any]
    new_job: NewJob


def signature_version(fn: Callable[..., Any]) -> str:
    """A fingerprint of the parameters (names, kinds, defaults present): the default version."""
    sig = inspect.signature(fn)
    text = ";".join(f"{p.name}:{p.kind.name}:{p.default is inspect.Parameter.empty}"
                    for p in sig.parameters.values())
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Task(Generic[P, R]):
    """A registered function. Call it to run it here; ``enqueue`` it to run it in a worker."""

    def __init__(self, app: Chervil, fn: Callable[P, R], name: str, options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.options = options
        self.signature = inspect.signature(fn)
        self.binder = Binder(self.signature)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.version = options.version or signature_version(fn)
        self.has_flow_control = options.flow != FlowControl()
        for pname in options.sensitive:
            if pname not in self.signature.parameters:
                raise ConfigurationError(
                    f"task {name}: sensitive={sorted(options.sensitive)} names {pname!r}, "
                    f"which is not a parameter of {fn.__qualname__}")

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.options.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle[R]:
        """Commit a job for this call and return its handle.

        ``delay=`` (seconds or timedelta) and ``at=`` (datetime) schedule it;
        ``connection=`` enqueues inside the caller's database transaction (see
        ``chervil/transactional.py``). A function with parameters of those names keeps
        them: use ``task.prepare`` and ``app.enqueue_many`` for the options then.
        """
        connection = kwargs.pop("connection", None) if "connection" not in \
            self.signature.parameters else None
        prepared = self.prepare(*args, **kwargs)
        return self.app.enqueue_many([prepared], connection=connection)[0]

    def prepare(self, *args: P.args, **kwargs: P.kwargs) -> PreparedJob:
        """Bind and encode a call without enqueueing it (for ``app.enqueue_many``)."""
        params = self.signature.parameters
        delay: Any = kwargs.pop("delay", None) if "delay" not in params else None
        at: Any = kwargs.pop("at", None) if "at" not in params else None
        priority: Any = kwargs.pop("priority", None) if "priority" not in params else None
        # TypeError here, in the caller (flow keys need the bound arguments themselves)
        bound = self.signature.bind(*args, **kwargs) if self.has_flow_control else None
        if bound is None:
            self.binder.check(args, kwargs)
        now = self.app.clock.now()
        run_at = _run_at(now, delay, at)
        payload = encode_payload(args, kwargs, self.app.settings.payload_limit_bytes, self.name)
        flow: dict[str, Any] = {}
        if bound is not None:
            bound.apply_defaults()
            try:
                flow = self.options.flow.job_fields(self.name, bound.arguments, now)
            except (KeyError, IndexError, AttributeError) as exc:
                raise ConfigurationError(
                    f"task {self.name}: a key template names {exc}, which this call does "
                    "not provide") from None
        return PreparedJob(self, NewJob(
            id=new_job_id(now), task=self.name, queue=self.options.queue, payload=payload,
            priority=self.options.priority if priority is None else int(priority),
            max_attempts=self.options.retry.max_attempts, run_at=run_at,
            task_version=self.version, **flow))

    def redacted(self, args: list[Any], kwargs: dict[str, Any]
                 ) -> tuple[list[Any], dict[str, Any]]:
        from .redact import redact_call

        return redact_call(self.signature, self.options.sensitive, args, kwargs)


def _run_at(now: float, delay: float | timedelta | None, at: datetime | None) -> float | None:
    if delay is not None and at is not None:
        raise TypeError("give delay= or at=, not both")
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if delay is not None:
        if delay < 0:
            raise ValueError(f"delay must be zero or more seconds, got {delay}")
        return now + float(delay) if delay else None
    if at is not None:
        if at.tzinfo is None:
            raise ValueError("at= needs a timezone-aware datetime (e.g. datetime.now(UTC))")
        return at.timestamp()
    return None


def task_name(fn: Callable[..., Any]) -> str:
    """``module.qualname``; for a script run as __main__, the module's importable name."""
    module = fn.__module__
    if module == "__main__":
        import sys

        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        else:
            import os

            module = os.path.splitext(os.path.basename(getattr(main, "__file__", "main")))[0]
    return f"{module}.{fn.__qualname__}"


def check_sensitive(sensitive: Collection[str] | str) -> frozenset[str]:
    if isinstance(sensitive, str):
        return frozenset({sensitive})
    return frozenset(sensitive)
