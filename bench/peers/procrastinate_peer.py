"""procrastinate: PsycopgConnector; its schema in PostgreSQL schema BENCH_SCHEMA.

Worker: ``procrastinate --app=procrastinate_peer.app worker -q bench -c 10``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from benchtask import USER, arecord, asend_schedule
from procrastinate import App, PsycopgConnector

SCHEMA = os.environ.get("BENCH_SCHEMA", "bench_procrastinate")
DSN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

app = App(connector=PsycopgConnector(conninfo=DSN,
                                     kwargs={"options": f"-c search_path={SCHEMA}"}))


@app.task(name="noop", queue="bench")
async def noop(i: int, s: str, t0: float = 0.0) -> None:
    await arecord(t0)


def setup() -> dict[str, Any]:
    async def go() -> None:
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    asyncio.run(go())
    return {"ok": True}


def _timed(n: int, max_seconds: float, batch: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with app.open_async():
            await noop.defer_async(i=-1, s=USER.format(0))
            start = time.perf_counter()
            done = 0
            while done < n:
                if batch == 1:
                    await noop.defer_async(i=done, s=USER.format(done))
                    done += 1
                else:
                    ids = range(done, min(done + batch, n))
                    await noop.batch_defer_async(*({"i": i, "s": USER.format(i)} for i in ids))
                    done += len(ids)
                if not done % 100 and time.perf_counter() - start > max_seconds:
                    break
            return {"n": done, "seconds": time.perf_counter() - start}
    return asyncio.run(go())


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return _timed(n, max_seconds, 1)


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    return _timed(n, max_seconds, 1000)


def fill(n: int) -> dict[str, Any]:
    return _timed(n, 1e9, 1000)


def send(k: int, gap_ms: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with app.open_async():
            return await asend_schedule(
                k, gap_ms, lambda i, t0: noop.defer_async(i=i, s=USER.format(i), t0=t0))
    return asyncio.run(go())


COMMANDS = {"setup": setup, "enqueue": enqueue, "bulk": bulk, "fill": fill, "send": send}
