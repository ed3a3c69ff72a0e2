"""A held job is not started once its lease may have lapsed: while the broker was out of
reach, the heartbeat could not renew it, and another worker may have recovered it and run
it too (two copies at once). The child hands it back instead. A real child's executor
path runs in this process against each broker; the lease states are set as the
heartbeat would leave them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from chervil import Chervil, JobStatus
from chervil.brokers.base import Lease
from chervil.job import Job
from chervil.worker.child import Child
from chervil.worker.queues import QueueSpec


@pytest.fixture
def app(broker_url: str) -> Iterator[Chervil]:
    a = Chervil(broker_url)
    ran: list[int] = []
    a.ran = ran  # type: ignore[attr-defined]

    @a.task(name="note")
    def note(i: int) -> None:
        ran.append(i)

    yield a
    a.close()


def held(app: Chervil, n: int) -> tuple[Child, list[Job]]:
    """A child (not started) holding ``n`` reserved jobs, as its fetcher leaves them."""
    for i in range(n):
        app.tasks["note"].enqueue(i)
    c = Child(app, QueueSpec.parse("default"), 2, worker_id="lapse-test", prefetch=0)
    jobs = app.broker.reserve(["default"], n, c.id, c.lease_seconds)
    assert len(jobs) == n
    c._take(jobs)
    return c, jobs


def test_a_job_whose_lease_was_renewed_runs(app: Chervil) -> None:
    c, [job] = held(app, 1)
    c._run(job, threading.get_ident())
    assert app.ran == [0]  # type: ignore[attr-defined]
    assert job.id not in c._lease_due


def test_a_job_an_extend_reported_lost_is_not_started(app: Chervil) -> None:
    c, [lost, kept] = held(app, 2)
    # the heartbeat's extend renewed one lease and reported the other lost
    c._renewed([Lease(j.id, j.lease_token or "") for j in (lost, kept)], [lost.id],
               time.monotonic() + c.lease_seconds)
    c._run(lost, threading.get_ident())
    c._run(kept, threading.get_ident())
    assert app.ran == [1]  # type: ignore[attr-defined]
    assert lost.id not in c._held and c._counters["lapsed"] == 1


def test_a_job_near_the_end_of_its_lease_is_handed_back(app: Chervil) -> None:
    """No extend got through for two thirds of a lease: the job goes back to the queue
    (no attempt spent) and runs when reserved again, with a lease of its own."""
    c, [job] = held(app, 1)
    c._lease_due[job.id] = time.monotonic() + c.lease_seconds / 4
    free = c._free
    c._run(job, threading.get_ident())
    assert app.ran == []  # type: ignore[attr-defined]
    back = app.broker.get(job.id)
    assert back is not None and back.status is JobStatus.QUEUED and back.attempts == 0
    assert job.id not in c._held and c._free == free + 1
    [again] = app.broker.reserve(["default"], 1, c.id, c.lease_seconds)
    c._take([again])
    c._run(again, threading.get_ident())
    assert app.ran == [0]  # type: ignore[attr-defined]
