"""The one operations API: the CLI (and later the dashboard, metrics, alerts) read this.

Views returned here are already redacted: a ``sensitive`` argument never leaves as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .app import Chervil
from .brokers.base import JobFilter, QueueStats, WorkerInfo
from .errors import DecodeError, JobNotFound
from .job import Job, JobStatus, decode_payload
from .redact import MASK


@dataclass(frozen=True)
class JobView:
    """A job as operators see it: arguments redacted, bad payloads as size and hash."""

    job: Job
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    payload_note: str | None  # set when the payload could not be decoded

    def to_dict(self) -> dict[str, Any]:
        j = self.job
        return {
            "id": j.id, "task": j.task, "queue": j.queue, "priority": j.priority,
            "status": j.status.value, "attempts": j.attempts, "max_attempts": j.max_attempts,
            "lost_leases": j.lost_leases, "dead_reason": j.dead_reason,
            "last_error": None if j.last_error is None else {
                "type": j.last_error.type, "message": j.last_error.message,
                "traceback": j.last_error.traceback},
            "args": self.args, "kwargs": self.kwargs, "payload": self.payload_note,
            "created_at": j.created_at, "run_at": j.run_at, "started_at": j.started_at,
            "finished_at": j.finished_at, "worker": j.worker, "lease_until": j.lease_until,
            "unique_key": j.unique_key, "task_version": j.task_version,
            "result": j.result, "trace": j.trace,
        }


class Admin:
    def __init__(self, app: Chervil) -> None:
        self.app = app
        self.broker = app.broker

    def view(self, job: Job) -> JobView:
        limit = self.app.settings.payload_limit_bytes
        try:
            args, kwargs = decode_payload(job.payload, limit)
        except DecodeError as exc:
            return JobView(job, None, None, f"undecodable ({exc}): {job.payload_digest()}")
        task = self.app.tasks.get(job.task)
        if task is not None:
            args, kwargs = task.redacted(args, kwargs)
        else:  # not registered here, so which arguments are sensitive is unknown
            args, kwargs = [MASK] * len(args), dict.fromkeys(kwargs, MASK)
        return JobView(job, args, kwargs, None)

    def job(self, job_id: str) -> JobView:
        job = self.broker.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}: check the id, or it expired by retention")
        return self.view(job)

    def jobs(self, status: JobStatus | None = None, queue: str | None = None,
             task: str | None = None, limit: int = 50, before_id: str | None = None
             ) -> list[JobView]:
        found = self.broker.list_jobs(JobFilter(status, queue, task), limit, before_id)
        return [self.view(j) for j in found]

    def queues(self) -> list[QueueStats]:
        return self.broker.queue_stats()

    def workers(self) -> list[WorkerInfo]:
        return self.broker.workers(seen_within=self.app.settings.lease_seconds * 2)

    def count_dead(self, queue: str | None = None, task: str | None = None) -> int:
        return sum(1 for _ in self._iter(JobStatus.DEAD, queue, task))

    def _iter(self, status: JobStatus, queue: str | None, task: str | None) -> Any:
        before = None
        while True:
            page = self.broker.list_jobs(JobFilter(status, queue, task), 500, before)
            yield from page
            if len(page) < 500:
                return
            before = page[-1].id

    def retry(self, ids: Sequence[str]) -> int:
        return self.broker.requeue(ids)

    def retry_dead(self, queue: str | None = None, task: str | None = None) -> int:
        return self.broker.requeue_dead(queue, task)

    def cancel(self, ids: Sequence[str]) -> int:
        return self.broker.cancel(ids)

    def purge(self, queue: str) -> int:
        return self.broker.purge(queue)

    def ready_count(self, queue: str) -> int:
        stats = {s.queue: s for s in self.broker.queue_stats()}
        s = stats.get(queue)
        return 0 if s is None else s.ready + s.counts.get(JobStatus.SCHEDULED.value, 0)

    def pause(self, queue: str, paused: bool = True) -> None:
        self.broker.set_paused(queue, paused)

    def pause_task(self, task: str, paused: bool = True) -> None:
        self.broker.set_task_paused(task, paused)

    def paused_tasks(self) -> list[str]:
        try:
            return self.broker.paused_tasks()
        except NotImplementedError:
            return []

    def schedules(self) -> list[dict[str, Any]]:
        marks = self.broker.schedule_marks() if self.app.schedules else {}
        now = self.app.clock.now()
        return [{"name": s.name, "task": s.task.name, "cron": s.cron.expression,
                 "tz": s.cron.tz, "misfire": s.misfire, "next": s.cron.next_after(now),
                 "last": marks.get(s.name)} for s in self.app.schedules.values()]

    def fire_schedule(self, name: str) -> str:
        """Fire a schedule once, now (its own unique key: never mistaken for a tick)."""
        from .errors import ChervilError
        from .schedule import Scheduler

        sched = self.app.schedules.get(name)
        if sched is None:
            raise ChervilError(f"no schedule named {name!r}; known: {sorted(self.app.schedules)}")
        [handle] = self.app.enqueue_many([Scheduler.prepare(sched, self.app.clock.now(),
                                                            manual=True)])
        return handle.id
