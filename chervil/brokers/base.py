"""The broker contract: every backend implements :class:`Broker`, and nothing else.

Each verb is atomic in the broker (one transaction or one script) and batched where a
batch makes sense: enqueue many, reserve many, extend many, finish many, each in one
round trip. Times come from the broker's clock (``Broker.clock``), injected so tests
move it by hand.

State changes (DESIGN §2)::

    enqueue          -> scheduled (run_at in the future) | queued
    reserve          queued (and due scheduled) -> running, attempts+1, new lease token
    extend           running -> running, lease_until pushed out (token must match)
    finish           running -> succeeded | scheduled (retry at T) | dead(reason)
                     (token must match: a stale finish is rejected, "fencing")
    release          running -> queued/scheduled, attempts-1 (handed back unstarted)
    recover          running with an expired lease -> queued, lost_leases+1,
                     or dead(worker_lost) once lost_leases reaches the limit
    requeue          dead | scheduled | cancelled -> queued, attempts reset
    cancel           scheduled | queued -> cancelled
    purge            every waiting job of one queue -> cancelled
    pause / resume   a queue stops / starts being reserved from
    prune            terminal records older than their retention are deleted
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock
from ..job import ErrorInfo, Job, JobStatus


@dataclass(frozen=True, slots=True)
class NewJob:
    """What enqueue hands the broker: a job before it exists."""

    id: str
    task: str
    queue: str
    payload: bytes
    priority: int = 0
    max_attempts: int = 1
    run_at: float | None = None  # None: ready now
    unique_key: str | None = None
    task_version: str | None = None
    trace: dict[str, str] = field(default_factory=dict)
    # While which states a unique key holds: "queued" (scheduled or queued), "active"
    # (queued or running), or "window" (until ``unique_until``, even after it finished).
    unique_mode: str = "active"
    unique_until: float | None = None
    # At most ``limit_n`` jobs with this key run at once, across all workers (a lock is 1).
    limit_key: str | None = None
    limit_n: int = 0
    # A token bucket per key: ``rate_per_second`` refill, ``rate_burst`` capacity.
    rate_key: str | None = None
    rate_per_second: float = 0.0
    rate_burst: float = 0.0


UNIQUE_MODES = ("queued", "active", "window")


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The id of the job that now exists; ``duplicate`` if it existed before."""

    id: str
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    job_id: str
    token: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt. ``status`` is SUCCEEDED, SCHEDULED (retry) or DEAD."""

    job_id: str
    lease_token: str
    status: JobStatus
    retry_at: float | None = None
    dead_reason: str | None = None
    error: ErrorInfo | None = None
    result: str | None = None  # JSON text, only when the task stores results

    @property
    def lease(self) -> Lease:
        return Lease(self.job_id, self.lease_token)


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    counts: dict[str, int]  # JobStatus value -> number of jobs
    oldest_ready_age: float | None  # seconds the oldest ready job has waited
    paused: bool = False

    @property
    def ready(self) -> int:
        return self.counts.get(JobStatus.QUEUED.value, 0)


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: JobStatus | None = None
    queue: str | None = None
    task: str | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker announces with each heartbeat."""

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    tasks: dict[str, str]  # task name -> version
    started_at: float
    seen_at: float = 0.0
    jobs: tuple[str, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)
    threads: int = 0  # jobs it runs at once (0: not announced)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid, "queues": list(self.queues),
                "tasks": self.tasks, "started_at": self.started_at, "seen_at": self.seen_at,
                "jobs": list(self.jobs), "counters": self.counters, "threads": self.threads}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerInfo:
        return cls(id=d["id"], host=d["host"], pid=int(d["pid"]), queues=tuple(d["queues"]),
                   tasks=dict(d["tasks"]), started_at=float(d["started_at"]),
                   seen_at=float(d.get("seen_at", 0.0)), jobs=tuple(d.get("jobs", ())),
                   counters=dict(d.get("counters", {})), threads=int(d.get("threads", 0)))


class Broker(abc.ABC):
    """One interface, every backend. See the module docstring for the state changes."""

    clock: Clock
    max_lost_leases: int = 3

    # -- producing --------------------------------------------------------------------
    @abc.abstractmethod
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Enqueued]:
        """Commit all jobs durably in one round trip, or raise and commit none.

        A job whose ``unique_key`` matches a waiting or running job is not added: its
        result names the existing job with ``duplicate=True``. So is a job whose id
        already exists (enqueue is idempotent by id).

        ``connection``: the caller's own open database connection (SQL backends only).
        The jobs are written inside the caller's current transaction and become visible
        to workers only when the caller commits; a rollback removes them. Backends
        without transactions raise ConfigurationError when given one.
        """

    # -- consuming --------------------------------------------------------------------
    @abc.abstractmethod
    def reserve(self, queues: Sequence[str], limit: int, worker: str,
                lease_seconds: float) -> list[Job]:
        """Lease up to ``limit`` ready jobs, due scheduled jobs included.

        Queues are taken in the order given (strict priority), and inside a queue by
        priority (high first), then run_at, then id. Paused queues and paused tasks are
        skipped, and so are jobs held back by flow control: a ``limit_key`` already
        running ``limit_n`` jobs, a ``rate_key`` whose bucket has no token. Held-back
        jobs stay queued (no attempt spent) and do not block the jobs behind them. Each
        job comes back running, with ``attempts`` counted and a fresh ``lease_token``;
        leaving ``running`` (finish, release, recover) frees its ``limit_key`` slot.
        """

    @abc.abstractmethod
    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        """Push the leases out to now + ``lease_seconds``; return the ids no longer held."""

    @abc.abstractmethod
    def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        """Record outcomes in one transaction; False for each stale (fenced) lease."""

    def finish_and_reserve(self, outcomes: Sequence[Outcome], queues: Sequence[str],
                           limit: int, worker: str, lease_seconds: float
                           ) -> tuple[list[bool], list[Job]]:
        """``finish`` then ``reserve``: one round trip where the backend can (ack and fetch).

        Each half keeps its own semantics; a backend may run both in one transaction.
        """
        return self.finish(outcomes), self.reserve(queues, limit, worker, lease_seconds)

    @abc.abstractmethod
    def release(self, leases: Sequence[Lease], delay: float = 0.0) -> int:
        """Hand leased jobs back unstarted, without spending an attempt."""

    @abc.abstractmethod
    def recover(self, leases: Sequence[Lease] | None = None) -> int:
        """Take back expired leases (or the given ones, at once) as lost leases.

        The attempt stays counted; after ``max_lost_leases`` the job goes dead with
        reason ``worker_lost``. Returns the number of jobs recovered.
        """

    @abc.abstractmethod
    def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a job may be ready in ``queues`` or ``timeout`` seconds pass.

        Backends wake waiting workers on enqueue (no sleep loop); a spurious wake-up is
        allowed, a missed one only delays a job to the end of ``timeout``.
        """

    def wait_and_reserve(self, queues: Sequence[str], timeout: float, limit: int,
                         worker: str, lease_seconds: float) -> list[Job]:
        """``wait``, then ``reserve``: where the backend can, the reserve runs in the broker
        as soon as the wait ends, with no round trip to the worker in between."""
        self.wait(queues, timeout)
        return self.reserve(queues, limit, worker, lease_seconds) if limit > 0 else []

    # -- operating --------------------------------------------------------------------
    @abc.abstractmethod
    def requeue(self, ids: Sequence[str]) -> int:
        """Dead, scheduled or cancelled jobs -> queued now, with attempts reset."""

    @abc.abstractmethod
    def requeue_dead(self, queue: str | None = None, task: str | None = None) -> int:
        """Every dead job (of a queue or task) -> queued now, attempts reset."""

    @abc.abstractmethod
    def cancel(self, ids: Sequence[str]) -> int:
        """Waiting jobs -> cancelled. Running jobs are not touched."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Every waiting job of ``queue`` -> cancelled (records are kept)."""

    @abc.abstractmethod
    def set_paused(self, queue: str, paused: bool) -> None:
        """Pause or resume reserving from ``queue``."""

    @abc.abstractmethod
    def prune(self, succeeded_before: float, dead_before: float, batch: int = 1000) -> int:
        """Delete terminal records finished before the cut-offs, in batches."""

    # -- inspecting -------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: str) -> Job | None: ...

    @abc.abstractmethod
    def list_jobs(self, filter: JobFilter, limit: int = 100,
                  before_id: str | None = None) -> list[Job]:
        """Jobs matching ``filter``, newest first, ids below ``before_id`` (paging)."""

    @abc.abstractmethod
    def queue_stats(self) -> list[QueueStats]:
        """Counts by status, age of the oldest ready job, paused flag, per queue."""

    # -- workers and coordination -----------------------------------------------------
    @abc.abstractmethod
    def register_worker(self, info: WorkerInfo) -> None:
        """Record (or refresh) a worker's heartbeat; seen_at is set to now."""

    @abc.abstractmethod
    def unregister_worker(self, worker_id: str) -> None: ...

    @abc.abstractmethod
    def workers(self, seen_within: float = 60.0) -> list[WorkerInfo]:
        """Workers whose last heartbeat is at most ``seen_within`` seconds old."""

    @abc.abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        """Take or renew a named lease (e.g. the scheduler's); False if another holds it."""

    @abc.abstractmethod
    def release_lease(self, name: str, owner: str) -> None: ...

    # -- flow control and scheduling ---------------------------------------------------
    def set_task_paused(self, task: str, paused: bool) -> None:
        """Hold (or release) every waiting job of one task type; held jobs do not fail."""
        raise NotImplementedError(f"{type(self).__name__} cannot pause task types yet")

    def paused_tasks(self) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} cannot pause task types yet")

    def schedule_marks(self) -> dict[str, float]:
        """The last fire time recorded for each cron schedule."""
        raise NotImplementedError(f"{type(self).__name__} keeps no schedule marks yet")

    def mark_schedule(self, name: str, fire_at: float) -> None:
        """Record that schedule ``name`` fired for ``fire_at`` (never moves backwards)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no schedule marks yet")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
