"""Prefetch: a child holds jobs beyond its threads only while jobs are short, and hands
back the ones stranded behind long jobs. A real child (fetcher, executors, finisher) runs
in this process against each broker; a spy on finish_and_reserve records how many jobs
each reserve asked for, and passes every call through to the broker."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chervil import Chervil, JobStatus
from chervil.brokers.base import WorkerInfo
from chervil.task import JobHandle
from chervil.worker import child as child_module
from chervil.worker.child import Child
from chervil.worker.queues import QueueSpec

from .conftest import wait_for

THREADS = 2


class Spy:
    """Records the limit of every reserve, then makes the real call."""

    def __init__(self, app: Chervil) -> None:
        self.limits: list[tuple[float, int]] = []
        real = app.broker.finish_and_reserve

        def finish_and_reserve(outcomes: Any, queues: Any, limit: int, *rest: Any) -> Any:
            self.limits.append((time.monotonic(), limit))
            return real(outcomes, queues, limit, *rest)

        app.broker.finish_and_reserve = finish_and_reserve  # type: ignore[method-assign]


@pytest.fixture
def app(broker_url: str) -> Iterator[Chervil]:
    a = Chervil(broker_url)
    release = threading.Event()
    a.release = release  # type: ignore[attr-defined]

    @a.task(name="quick")
    def quick(i: int) -> None:
        pass

    @a.task(name="slow")
    def slow(i: int) -> None:
        release.wait(30)

    yield a
    release.set()
    a.close()


def run_child(app: Chervil) -> tuple[Child, threading.Thread]:
    c = Child(app, QueueSpec.parse("default"), THREADS, worker_id="prefetch-test",
              poll_seconds=0.1, prefetch=THREADS)
    t = threading.Thread(target=c.run, daemon=True)
    t.start()
    return c, t


def drain(app: Chervil, handles: list[JobHandle[Any]]) -> None:
    """Run a child until the last jobs succeeded, then stop it."""
    c, t = run_child(app)
    try:
        wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED for h in handles[-5:]),
                 what="the jobs")
    finally:
        c.stop()
        t.join(10)


def test_short_jobs_are_prefetched(app: Chervil) -> None:
    spy = Spy(app)
    quick = [app.tasks["quick"].enqueue(i) for i in range(300)]
    drain(app, quick)
    assert max(limit for _, limit in spy.limits) == THREADS * 2
    assert all(h.status() is JobStatus.SUCCEEDED for h in quick)


def test_no_prefetch_behind_long_jobs_and_stranded_ones_go_back(
        app: Chervil, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(child_module, "STRANDED_SECONDS", 0.5)
    spy = Spy(app)
    warm = [app.tasks["quick"].enqueue(i) for i in range(300)]
    c, t = run_child(app)
    try:
        wait_for(lambda: warm[-1].status() is JobStatus.SUCCEEDED, what="the warm-up")
        slow = [app.tasks["slow"].enqueue(i) for i in range(THREADS)]
        behind = [app.tasks["quick"].enqueue(i) for i in range(4)]
        wait_for(lambda: all(h.status() is JobStatus.RUNNING for h in slow),
                 what="every thread on a slow job")
        time.sleep(child_module.LONG_JOB_SECONDS)
        since = time.monotonic()
        # Any quick job reserved with the slow ones waits for no thread: it goes back to
        # the queue, where another worker could take it, and none stays held.
        wait_for(lambda: all(h.status() is JobStatus.QUEUED for h in behind), timeout=10,
                 what="the quick jobs behind the slow ones back in the queue")
        assert all(limit <= THREADS for at, limit in spy.limits if at > since)
        assert all(h.status() is JobStatus.RUNNING for h in slow)
        app.release.set()  # type: ignore[attr-defined]
        wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED for h in slow + behind),
                 what="every job")
        assert all(h.refresh().attempts == 1 for h in behind)  # handing back spent no attempt
    finally:
        c.stop()
        t.join(10)


@pytest.mark.parametrize(("concurrency", "other_threads", "most"), [
    (50, None, THREADS * 2),  # 48 spare slots: the whole prefetch
    (THREADS + 1, None, THREADS + 1),  # one spare slot
    (50, 48, THREADS),  # another worker's threads can fill every slot: none
    (50, 0, THREADS),  # another worker that does not say its threads: none
])
def test_prefetch_of_a_concurrency_key_takes_only_its_spare_slots(
        app: Chervil, concurrency: int, other_threads: int | None, most: int) -> None:
    """A held job counts as running against its key: a prefetched one holds a slot of the
    shared limit that no thread runs. A child prefetches jobs of a concurrency key only
    into the slots the threads of every live worker running the task cannot fill, shared
    among those workers, so no thread anywhere waits for a slot a prefetched job holds."""
    @app.task(name="limited", concurrency=concurrency)
    def limited(i: int) -> None:
        pass

    if other_threads is not None:
        app.broker.register_worker(WorkerInfo(
            id="another-host", host="elsewhere", pid=1, queues=("default",),
            tasks={"limited": limited.version}, started_at=app.clock.now(),
            threads=other_threads))
    spy = Spy(app)
    drain(app, [limited.enqueue(i) for i in range(300)])
    assert max(limit for _, limit in spy.limits) == most


def test_a_view_of_workers_without_this_child_or_its_siblings_is_not_kept(
        app: Chervil, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started together announce themselves a moment apart, so a child's first
    view of the live workers may lack its siblings. Such a view is used but not kept: a
    sibling whose threads fill every spare slot of a concurrency key counts at the next
    look, not when a cached view expires. A view read once the child has settled (and
    that names it) is kept for 5 s."""
    @app.task(name="limited", concurrency=50)
    def limited(i: int) -> None:
        pass

    c = Child(app, QueueSpec.parse("default"), THREADS, worker_id="prefetch-test",
              prefetch=40)
    assert c._spare_slots({"limited"}) == 40  # alone: 48 spare slots, 40 prefetched
    sibling = WorkerInfo(id="a-sibling", host="here", pid=2, queues=("default",),
                         tasks={"limited": limited.version}, started_at=app.clock.now(),
                         threads=48)
    app.broker.register_worker(sibling)
    assert c._spare_slots({"limited"}) == 0  # its threads fill every spare slot

    monkeypatch.setattr(child_module, "SETTLE_SECONDS", 0.0)
    c._announce()
    assert c._spare_slots({"limited"}) == 0  # settled, and it names this child: kept
    app.broker.register_worker(dataclasses.replace(sibling, threads=8))
    assert c._spare_slots({"limited"}) == 0  # the kept view, until it is 5 s old
