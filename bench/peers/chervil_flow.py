"""chervil under flow control: the bench no-op task once per option, on queue ``bench``.

Worker: ``chervil worker chervil_flow:app -Q bench -p 2 -t 8 --log-level WARNING`` (the
worker imports this module, so every flow task below is registered in it). The producer
fills the task named by BENCH_FLOW; broker from CHERVIL_BROKER_URL.

Every task has the same signature and body (``benchtask.record``), so the jobs differ
only by their option:

    plain        no option
    unique       unique="k:{i}"            every job its own key: none is deduplicated
    lock         lock="acct:{k}", k=i%1000  1000 keys: locks rarely collide
    concurrency  concurrency=64
    rate         rate_limit="1000000/s"     a bucket that never empties: bookkeeping only
"""

from __future__ import annotations

import os
from typing import Any

from benchtask import USER, client, record, timed_batches

from chervil import Chervil

app = Chervil()
# redis-py imported and the client made at import, in every worker child, as a real task
# module would: not in the first job a child runs (a 40-80 ms pickup on PostgreSQL).
client()
LOCK_KEYS = 1000

OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "unique": {"unique": "k:{i}"},
    "lock": {"lock": "acct:{k}"},
    "concurrency": {"concurrency": 64},
    "rate": {"rate_limit": "1000000/s"},
}


def _noop(i: int, s: str, k: int = 0, t0: float = 0.0) -> None:
    record(t0)


TASKS = {option: app.task(name=f"flow_{option}", queue="bench", **kw)(_noop)
         for option, kw in OPTIONS.items()}


def _task() -> Any:
    option = os.environ.get("BENCH_FLOW", "plain")
    if option not in TASKS:
        raise SystemExit(f"BENCH_FLOW={option!r}: one of {', '.join(TASKS)}")
    return TASKS[option]


def fill(n: int) -> dict[str, Any]:
    """N jobs (plus one warm-up job, i=-1) in batches of 1000; n = jobs not deduplicated."""
    task = _task()
    dup = 0

    def many(ids: range) -> None:
        nonlocal dup
        handles = app.enqueue_many([task.prepare(i, USER.format(i), i % LOCK_KEYS)
                                    for i in ids])
        dup += sum(1 for h in handles if h.duplicate)

    out = timed_batches(n, 1e9, 1000, many)
    out["duplicates"] = dup
    out["n"] = int(out["n"]) - dup
    return out


def setup() -> dict[str, Any]:
    app.broker.queue_stats()  # opens the broker: creates and migrates the schema
    return {"ok": True}


COMMANDS = {"fill": fill, "setup": setup}
