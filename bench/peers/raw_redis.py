"""The Redis floor: no framework, no record, no lease; a list and two processes.

Enqueue is one ``LPUSH`` of a JSON message (what Huey does, with JSON for pickle). A
worker process blocks in ``BRPOP`` for one message, then takes up to 99 more with one
``RPOP key count``, and runs them; two such processes, as every worker here has. It shows
what this machine gives to any queue on this Redis: the single-enqueue round trip, and a
pickup made of nothing but two wake-ups (Redis, then the blocked worker). Run in the
project's interpreter (redis-py with hiredis).
Worker: ``python -c "import raw_redis; raw_redis.work()"``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from benchtask import USER, record, redis_url, send_schedule, timed_batches, timed_loop

KEY = "bench:raw"
BATCH = 100
PROCESSES = 2


def _client() -> redis.Redis:
    return redis.Redis.from_url(redis_url())


def _message(i: int, t0: float = 0.0) -> str:
    return json.dumps({"task": "noop", "args": [i, USER.format(i)], "t0": t0})


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    r = _client()
    return timed_loop(n, max_seconds, lambda i: r.lpush(KEY, _message(i)))


def _many(r: redis.Redis, ids: range) -> None:
    r.lpush(KEY, *[_message(i) for i in ids])


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    r = _client()
    return timed_batches(n, max_seconds, 1000, lambda ids: _many(r, ids))


def fill(n: int) -> dict[str, Any]:
    return bulk(n, 1e9)  # no time limit


def send(k: int, gap_ms: float) -> dict[str, Any]:
    r = _client()
    return send_schedule(k, gap_ms, lambda i, t0: r.lpush(KEY, _message(i, t0)))


def _run(raw: bytes) -> None:
    message = json.loads(raw)
    _i, _s = message["args"]
    record(message["t0"])


def work() -> None:
    for _ in range(PROCESSES - 1):
        if os.fork() == 0:
            break
    r = _client()
    while True:
        got = r.brpop([KEY], timeout=1)  # within redis-py's 5 s socket timeout
        if got is None:
            continue
        _run(got[1])
        for raw in r.rpop(KEY, BATCH - 1) or ():
            _run(raw)


COMMANDS = {"enqueue": enqueue, "bulk": bulk, "fill": fill, "send": send}
