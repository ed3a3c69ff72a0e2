"""taskiq: ``RedisStreamBroker`` from taskiq-redis, no result backend.

Worker: ``taskiq worker taskiq_peer:broker --workers 2 --log-level WARNING``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from benchtask import USER, arecord, asend_schedule, redis_url
from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(url=redis_url())


@broker.task(task_name="noop")
async def noop(i: int, s: str, t0: float = 0.0) -> None:
    await arecord(t0)


async def _timed(n: int, max_seconds: float) -> dict[str, Any]:
    import time

    await broker.startup()
    await noop.kiq(-1, USER.format(0))
    start = time.perf_counter()
    done = 0
    for i in range(n):
        await noop.kiq(i, USER.format(i))
        done += 1
        if not i % 100 and time.perf_counter() - start > max_seconds:
            break
    seconds = time.perf_counter() - start
    await broker.shutdown()
    return {"n": done, "seconds": seconds}


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return asyncio.run(_timed(n, max_seconds))


def fill(n: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        await broker.startup()

        async def batch(ids: range) -> None:
            await asyncio.gather(*(noop.kiq(i, USER.format(i)) for i in ids))
        for lo in range(0, n, 500):
            await batch(range(lo, min(lo + 500, n)))
        await broker.shutdown()
        return {"n": n}
    return asyncio.run(go())


def send(k: int, gap_ms: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        await broker.startup()
        out = await asend_schedule(k, gap_ms, lambda i, t0: noop.kiq(i, USER.format(i), t0))
        await broker.shutdown()
        return out
    return asyncio.run(go())


COMMANDS = {"enqueue": enqueue, "fill": fill, "send": send}
