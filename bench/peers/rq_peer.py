"""rq: one Queue, ``result_ttl=0``.

Worker: ``rq worker -u URL -w rq.worker.SimpleWorker -q bench`` (``-q`` is quiet).
"""

from __future__ import annotations

from typing import Any

from benchtask import USER, record, redis_url, send_schedule, timed_batches, timed_loop
from redis import Redis
from rq import Queue

queue = Queue("bench", connection=Redis.from_url(redis_url()))


def noop(i: int, s: str, t0: float = 0.0) -> None:
    record(t0)


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_loop(n, max_seconds, lambda i: queue.enqueue(
        "rq_peer.noop", i, USER.format(i), result_ttl=0))


def _many(ids: range) -> None:
    queue.enqueue_many([Queue.prepare_data("rq_peer.noop", args=(i, USER.format(i)),
                                           result_ttl=0) for i in ids])


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_batches(n, max_seconds, 1000, _many)


def fill(n: int) -> dict[str, Any]:
    return timed_batches(n, 1e9, 1000, _many)


def send(k: int, gap_ms: float) -> dict[str, Any]:
    return send_schedule(k, gap_ms, lambda i, t0: queue.enqueue(
        "rq_peer.noop", i, USER.format(i), t0, result_ttl=0))


COMMANDS = {"enqueue": enqueue, "bulk": bulk, "fill": fill, "send": send}
