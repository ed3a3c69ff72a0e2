"""huey: ``RedisHuey`` or ``SqliteHuey`` (BENCH_STORAGE=redis|sqlite|sqlite-fsync).

Worker: ``huey_consumer huey_peer.huey -k process -w 2 -q``. SqliteHuey's default is
``fsync=False`` (PRAGMA synchronous=OFF); ``sqlite-fsync`` sets ``fsync=True`` (FULL).
"""

from __future__ import annotations

import os
from typing import Any

from benchtask import (
    USER,
    broker_url,
    record,
    redis_url,
    send_schedule,
    timed_batches,
    timed_loop,
)
from huey import RedisHuey, SqliteHuey

STORAGE = os.environ.get("BENCH_STORAGE", "redis")


def make(fsync: bool) -> Any:
    if STORAGE.startswith("sqlite"):
        return SqliteHuey("bench", filename=broker_url(), results=False, fsync=fsync)
    return RedisHuey("bench", url=redis_url(), results=False)


huey = make(STORAGE == "sqlite-fsync")


@huey.task()
def noop(i: int, s: str, t0: float = 0.0) -> None:
    record(t0)


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return timed_loop(n, max_seconds, lambda i: noop(i, USER.format(i)))


def fill(n: int) -> dict[str, Any]:
    # Filling is untimed: skip the per-job fsync; the file's content is the same.
    fast = make(False)
    task = fast.task(name=noop.name)(noop.func)
    return timed_batches(n, 1e9, 1000, lambda ids: [task(i, USER.format(i)) for i in ids])


def send(k: int, gap_ms: float) -> dict[str, Any]:
    return send_schedule(k, gap_ms, lambda i, t0: noop(i, USER.format(i), t0=t0))


COMMANDS = {"enqueue": enqueue, "fill": fill, "send": send}
