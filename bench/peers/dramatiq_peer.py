"""dramatiq: RedisBroker, no Results middleware.

Worker: ``dramatiq dramatiq_peer --processes 2 --threads 8``.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from benchtask import USER, record, redis_url, send_schedule, timed_batches, timed_loop
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=redis_url())
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop", max_retries=0)
def noop(i: int, s: str, t0: float = 0.0) -> None:
    record(t0)


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_loop(n, max_seconds, lambda i: noop.send(i, USER.format(i)))


def fill(n: int) -> dict[str, Any]:
    return timed_batches(n, 1e9, 1000, lambda ids: [noop.send(i, USER.format(i)) for i in ids])


def send(k: int, gap_ms: float) -> dict[str, Any]:
    return send_schedule(k, gap_ms, lambda i, t0: noop.send(i, USER.format(i), t0))


COMMANDS = {"enqueue": enqueue, "fill": fill, "send": send}
