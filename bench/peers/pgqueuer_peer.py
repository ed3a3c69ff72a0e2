"""pgqueuer: asyncpg driver; its tables in PostgreSQL schema BENCH_SCHEMA.

Worker: ``python -c "import pgqueuer_peer; pgqueuer_peer.work()"``, i.e. ``PgQueuer.run()``
with its defaults (batch_size 10): the ``pgq run`` CLI of 1.6.0 crashes at start-up in its
logging setup (AttributeError: 'str' object has no attribute 'name'). Payload: JSON bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import asyncpg
from benchtask import USER, arecord, asend_schedule
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

SCHEMA = os.environ.get("BENCH_SCHEMA", "bench_pgqueuer")
DSN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _connect() -> Any:
    return await asyncpg.connect(DSN, server_settings={"search_path": SCHEMA})


async def main() -> PgQueuer:
    pgq = PgQueuer(AsyncpgDriver(await _connect()))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        args = json.loads(job.payload or b"{}")
        await arecord(args.get("t0", 0.0))

    return pgq


def work() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)

    async def go() -> None:
        pgq = await main()
        await pgq.run()
    asyncio.run(go())


def _payload(i: int, t0: float = 0.0) -> bytes:
    body: dict[str, Any] = {"i": i, "s": USER.format(i)}
    if t0:
        body["t0"] = t0
    return json.dumps(body).encode()


def setup() -> dict[str, Any]:
    async def go() -> None:
        conn = await _connect()
        await Queries(AsyncpgDriver(conn)).install()
        await conn.close()
    asyncio.run(go())
    return {"ok": True}


def _timed(n: int, max_seconds: float, batch: int) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        conn = await _connect()
        q = Queries(AsyncpgDriver(conn))
        await q.enqueue("noop", _payload(-1))
        start = time.perf_counter()
        done = 0
        while done < n:
            if batch == 1:
                await q.enqueue("noop", _payload(done))
                done += 1
            else:
                ids = range(done, min(done + batch, n))
                await q.enqueue(["noop"] * len(ids), [_payload(i) for i in ids],
                                [0] * len(ids))
                done += len(ids)
            if not done % 100 and time.perf_counter() - start > max_seconds:
                break
        seconds = time.perf_counter() - start
        await conn.close()
        return {"n": done, "seconds": seconds}
    return asyncio.run(go())


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    return _timed(n, max_seconds, 1)


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    return _timed(n, max_seconds, 1000)


def fill(n: int) -> dict[str, Any]:
    return _timed(n, 1e9, 1000)


def send(k: int, gap_ms: float) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        conn = await _connect()
        q = Queries(AsyncpgDriver(conn))
        out = await asend_schedule(k, gap_ms, lambda i, t0: q.enqueue("noop", _payload(i, t0)))
        await conn.close()
        return out
    return asyncio.run(go())


COMMANDS = {"setup": setup, "enqueue": enqueue, "bulk": bulk, "fill": fill, "send": send}
