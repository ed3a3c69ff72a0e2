"""Helpers for users' tests: a throwaway app, a drain that runs jobs for real, a clock.

    from chervil.testing import drain, temporary_app

    def test_welcome(tmp_path):
        app = temporary_app(tmp_path)          # SQLite file in tmp_path, fake clock
        ...register tasks on app, enqueue...
        report = drain(app, fail_fast=True)    # runs every ready job in this process

``drain`` goes through the real path: jobs are encoded, committed to the broker,
reserved with a lease, decoded, bound, run, and their outcome finished in the broker.
With a :class:`FakeClock` it advances time to run retries and delayed jobs.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .app import Chervil
from .clock import FakeClock
from .errors import ChervilError
from .job import Job, JobStatus
from .runner import execute

__all__ = ["DrainReport", "FakeClock", "JobFailedInDrain", "drain", "temporary_app"]


class JobFailedInDrain(ChervilError):
    """A job failed during ``drain(fail_fast=True)``; ``__cause__`` is the task's error."""


@dataclass
class DrainReport:
    ran: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    jobs: list[Job] = field(default_factory=list)


def temporary_app(directory: str | os.PathLike[str] | None = None,
                  clock: FakeClock | None = None, **settings: Any) -> Chervil:
    """A Chervil app on a fresh SQLite file (in ``directory`` or a new temp dir)."""
    folder = os.fspath(directory) if directory is not None else tempfile.mkdtemp(
        prefix="chervil-test-")
    path = os.path.join(folder, "chervil-test.db")
    return Chervil(f"sqlite:///{path}", clock=clock or FakeClock(), **settings)


def drain(app: Chervil, queues: list[str] | None = None, *, fail_fast: bool = False,
          advance_clock: bool = True, max_wait: float = 5.0,
          max_jobs: int = 10_000) -> DrainReport:
    """Run jobs until none is ready and none is scheduled soon.

    With a FakeClock, scheduled jobs (retries, delays) are reached by moving the clock;
    with a real clock, by waiting for those due within ``max_wait`` seconds.
    ``fail_fast`` re-raises the first task exception instead of recording a retry.
    """
    broker = app.broker
    names = queues or sorted({t.options.queue for t in app.tasks.values()} | {"default"})
    report = DrainReport()
    while report.ran < max_jobs:
        jobs = broker.reserve(names, 50, "drain", app.settings.lease_seconds)
        if not jobs:
            if advance_clock and _advance(app, names, max_wait):
                continue
            return report
        for job in jobs:
            caught: list[BaseException] = []
            outcome = execute(app.tasks.get(job.task), job, app.clock,
                              app.settings.payload_limit_bytes, caught)
            broker.finish([outcome])
            report.ran += 1
            report.outcomes[outcome.status.value] += 1
            report.jobs.append(job)
            if fail_fast and caught:
                raise caught[0]
            if fail_fast and outcome.status is JobStatus.DEAD:
                raise JobFailedInDrain(f"job {job.id} ({job.task}) went dead "
                                       f"({outcome.dead_reason}): "
                                       f"{outcome.error.message if outcome.error else ''}")
    return report


def _advance(app: Chervil, queues: list[str], max_wait: float) -> bool:
    """Reach the next scheduled job in ``queues``; False if there is none (soon enough)."""
    clock = app.clock
    nexts = [j.run_at for j in app.broker.list_jobs(
        _filter(JobStatus.SCHEDULED), limit=1000) if j.queue in queues]
    if not nexts:
        return False
    due = min(nexts)
    if isinstance(clock, FakeClock):
        clock.set(max(clock.now(), due))
        return True
    wait = due - clock.now()
    if wait > max_wait:
        return False
    time.sleep(max(0.0, wait))
    return True


def _filter(status: JobStatus) -> Any:
    from .brokers.base import JobFilter

    return JobFilter(status=status)
