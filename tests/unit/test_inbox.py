"""The child's inbox: urgent queues first, then priority, then arrival."""

from __future__ import annotations

import threading

from chervil.job import Job, JobStatus
from chervil.worker.inbox import Inbox
from chervil.worker.queues import QueueSpec


def job(name: str, queue: str = "batch", priority: int = 0) -> Job:
    return Job(id=name, task="t", queue=queue, payload=b"{}", status=JobStatus.RUNNING,
               priority=priority)


def drain(inbox: Inbox) -> list[str]:
    out = []
    while len(inbox):
        j = inbox.get()
        assert j is not None
        out.append(j.id)
    return out


def test_a_job_of_an_earlier_queue_overtakes_prefetched_ones() -> None:
    inbox = Inbox(QueueSpec.parse("critical,batch"))
    inbox.put([job("b1"), job("b2"), job("b3", priority=5)])
    inbox.put([job("c1", "critical"), job("b4")])
    assert drain(inbox) == ["c1", "b3", "b1", "b2", "b4"]


def test_weighted_queues_keep_priority_then_arrival() -> None:
    inbox = Inbox(QueueSpec.parse("critical:3,batch:1"))
    inbox.put([job("b1"), job("c1", "critical"), job("b2", priority=1)])
    assert drain(inbox) == ["b2", "b1", "c1"]


def test_take_all_then_close() -> None:
    inbox = Inbox(QueueSpec.parse("batch"))
    inbox.put([job("b1"), job("b2", priority=1)])
    assert [j.id for j in inbox.take_all()] == ["b2", "b1"]
    got: list[Job | None] = []
    t = threading.Thread(target=lambda: got.append(inbox.get()))
    t.start()  # its tokens are still queued, its jobs gone: it waits for more
    inbox.put([job("b3")])
    t.join(5)
    assert [j.id for j in got if j] == ["b3"]
    inbox.close(2)
    assert inbox.get() is None and inbox.get() is None
