"""The fetcher's role passes between a child's executors (leader/follower): a job that a
wait on the broker brings to an idle child runs on the thread that fetched it, while an
idle executor fetches on; at most ``threads`` jobs run at once. A real child runs in this
process against each broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chervil import Chervil, JobStatus
from chervil.worker.child import Child
from chervil.worker.queues import QueueSpec

from .conftest import wait_for

THREADS = 2


class Board:
    """What the blocking task saw: where each job ran, and how many ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.ran_on: dict[int, str] = {}
        self.running = 0
        self.most = 0


@pytest.fixture
def app(broker_url: str) -> Iterator[Chervil]:
    a = Chervil(broker_url)
    board = Board()
    a.board = board  # type: ignore[attr-defined]

    @a.task(name="block")
    def block(i: int) -> None:
        with board.lock:
            board.ran_on[i] = threading.current_thread().name
            board.running += 1
            board.most = max(board.most, board.running)
        board.release.wait(30)
        with board.lock:
            board.running -= 1

    yield a
    board.release.set()
    a.close()


def test_a_job_from_an_idle_wait_runs_where_it_was_fetched(app: Chervil) -> None:
    board: Board = app.board  # type: ignore[attr-defined]
    waiting = threading.Event()
    fetched: dict[str, str] = {}  # job id -> thread whose wait on the broker returned it
    real = app.broker.wait_and_reserve

    def wait_and_reserve(*args: Any) -> Any:
        waiting.set()
        jobs = real(*args)
        for job in jobs:
            fetched[job.id] = threading.current_thread().name
        return jobs

    app.broker.wait_and_reserve = wait_and_reserve  # type: ignore[method-assign]
    # a long poll: the fetcher waits on the broker, rarely looking again on its timer
    c = Child(app, QueueSpec.parse("default"), THREADS, worker_id="role-test",
              poll_seconds=3.0, prefetch=0)
    t = threading.Thread(target=c.run, daemon=True)
    t.start()
    block = app.tasks["block"]
    try:
        assert waiting.wait(10), "the child never waited on the broker"
        first = block.enqueue(0)
        wait_for(lambda: 0 in board.ran_on, what="the first job to start")
        assert board.ran_on[0] == fetched[first.id]  # no handoff to another thread
        # the first job blocks the thread that fetched it: another fetches the next ones
        second = block.enqueue(1)
        wait_for(lambda: 1 in board.ran_on, what="a second job while the first runs")
        third = block.enqueue(2)
        wait_for(lambda: third.status() is JobStatus.QUEUED, what="the third job queued")
        assert 2 not in board.ran_on  # both threads busy: it waits
        board.release.set()
        wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED
                             for h in (first, second, third)), what="every job")
        assert board.most == THREADS
    finally:
        board.release.set()
        c.stop()
        t.join(10)
    assert not t.is_alive()
    assert c._fetch_error is None
