"""chervil: ``noop`` on queue ``bench``; broker from CHERVIL_BROKER_URL.

Worker: ``chervil worker chervil_peer:app -Q bench -p 2 -t 8 --log-level WARNING``.
"""

from __future__ import annotations

from typing import Any

from benchtask import USER, client, record, send_schedule, timed_batches, timed_loop

from chervil import Chervil

app = Chervil()
# redis-py imported and the client made at import, in every worker child, as a real task
# module would: not in the first job a child runs (a 40-80 ms pickup on PostgreSQL).
client()


@app.task(name="noop", queue="bench")
def noop(i: int, s: str, t0: float = 0.0) -> None:
    record(t0)


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_loop(n, max_seconds, lambda i: noop.enqueue(i, USER.format(i)))


def _many(ids: range) -> None:
    app.enqueue_many([noop.prepare(i, USER.format(i)) for i in ids])


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_batches(n, max_seconds, 1000, _many)


def fill(n: int) -> dict[str, Any]:
    return timed_batches(n, 1e9, 1000, _many)


def send(k: int, gap_ms: float) -> dict[str, Any]:
    return send_schedule(k, gap_ms, lambda i, t0: noop.enqueue(i, USER.format(i), t0=t0))


def setup() -> dict[str, Any]:
    app.broker.queue_stats()  # opens the broker: creates and migrates the schema
    return {"ok": True}


COMMANDS = {"enqueue": enqueue, "bulk": bulk, "fill": fill, "send": send, "setup": setup}
