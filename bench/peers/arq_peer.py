"""arq: ``keep_result=0``; BENCH_ARQ_POLL sets ``poll_delay`` (default 0.5 s, tuned 0.05).

Worker: ``python -c "import arq_peer; arq_peer.work()"`` (``run_worker`` without the
CLI's INFO logging).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings
from benchtask import USER, arecord, asend_schedule, redis_url


async def noop(ctx: dict[str, Any], i: int, s: str, t0: float = 0.0) -> None:
    await arecord(t0)


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(redis_url())
    keep_result = 0
    poll_delay = float(os.environ.get("BENCH_ARQ_POLL", "0.5"))


def work() -> None:
    from arq.worker import run_worker

    run_worker(WorkerSettings)  # type: ignore[arg-type]


async def _pool() -> Any:
    return await create_pool(WorkerSettings.redis_settings)


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        pool = await _pool()
        await pool.enqueue_job("noop", -1, USER.format(0))
        start = time.perf_counter()
        done = 0
        for i in range(n):
            await pool.enqueue_job("noop", i, USER.format(i))
            done += 1
            if not i % 100 and time.perf_counter() - start > max_seconds:
                break
        seconds = time.perf_counter() - start
        await pool.aclose()
        return {"n": done, "seconds": seconds}
    return asyncio.run(go())


def fill(n: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        pool = await _pool()
        for lo in range(0, n, 500):
            await asyncio.gather(*(pool.enqueue_job("noop", i, USER.format(i))
                                   for i in range(lo, min(lo + 500, n))))
        await pool.aclose()
        return {"n": n}
    return asyncio.run(go())


def send(k: int, gap_ms: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        pool = await _pool()
        out = await asend_schedule(
            k, gap_ms, lambda i, t0: pool.enqueue_job("noop", i, USER.format(i), t0))
        await pool.aclose()
        return out
    return asyncio.run(go())


COMMANDS = {"enqueue": enqueue, "fill": fill, "send": send}
