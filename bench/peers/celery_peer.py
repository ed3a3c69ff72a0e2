"""celery: Redis broker, no result backend.

Worker: ``celery -A celery_peer -q worker -P prefork -c 2 -l WARNING``.
"""

from __future__ import annotations

from typing import Any

from benchtask import USER, record, redis_url, send_schedule, timed_batches, timed_loop
from celery import Celery

app = Celery("celery_peer", broker=redis_url())
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True)


@app.task(name="noop", ignore_result=True)
def noop(i: int, s: str, t0: float = 0.0) -> None:
    record(t0)


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_loop(n, max_seconds, lambda i: noop.delay(i, USER.format(i)))


def fill(n: int) -> dict[str, Any]:
    return timed_batches(n, 1e9, 1000, lambda ids: [noop.delay(i, USER.format(i)) for i in ids])


def send(k: int, gap_ms: float) -> dict[str, Any]:
    return send_schedule(k, gap_ms, lambda i, t0: noop.delay(i, USER.format(i), t0))


COMMANDS = {"enqueue": enqueue, "fill": fill, "send": send}
