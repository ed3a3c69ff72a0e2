"""Reserved jobs waiting for an executor thread of a child, most urgent first.

With strict queue order (``-Q critical,default``) a job of an earlier queue goes first,
then higher priority, then arrival; with weighted queues, priority then arrival. So a job
reserved for an urgent queue overtakes jobs the child prefetched before it arrived.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Iterable

from ..job import Job
from .queues import QueueSpec


class Lead:
    """The token that hands the fetcher's role to the executor that takes it."""


LEAD = Lead()


class Inbox:
    """A heap of jobs, and a token per job on a SimpleQueue for the executors to block on
    (a Condition instead cost the drain 12%: each wait makes a lock)."""

    def __init__(self, queues: QueueSpec) -> None:
        self._rank = ({q: i for i, q in enumerate(queues.names)}
                      if queues.weights is None else {})
        self._heap: list[tuple[int, int, int, Job]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._tokens: queue.SimpleQueue[bool | Lead] = queue.SimpleQueue()  # False: stop
        self.last_take = time.monotonic()  # an executor last took a job

    def put(self, jobs: Iterable[Job], lead: bool = False) -> None:
        """Add jobs; with ``lead``, the next executor to wake takes the fetcher's role
        (before any of these jobs)."""
        if lead:
            self._tokens.put(LEAD)
        n = 0
        with self._lock:
            for job in jobs:
                heapq.heappush(self._heap, (self._rank.get(job.queue, 0), -job.priority,
                                            next(self._seq), job))
                n += 1
        for _ in range(n):
            self._tokens.put(True)

    def get(self) -> Job | Lead | None:
        """The most urgent job, waiting for one; LEAD: fetch now; None once closed."""
        while token := self._tokens.get():
            if token is LEAD:
                return LEAD
            with self._lock:
                if self._heap:  # (empty when take_all ran since its token was put)
                    self.last_take = time.monotonic()
                    return heapq.heappop(self._heap)[3]
        return None

    def take_all(self) -> list[Job]:
        """Every waiting job, most urgent first (to hand them back)."""
        with self._lock:
            jobs = [entry[3] for entry in sorted(self._heap)]
            self._heap.clear()
            return jobs

    def close(self, executors: int) -> None:
        """Each of ``executors`` threads gets None once it has run what it took."""
        for _ in range(executors):
            self._tokens.put(False)

    def __len__(self) -> int:
        return len(self._heap)
