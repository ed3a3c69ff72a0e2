"""What every driver shares: the task body, the command line, and JSON output.

Imported by drivers running in any virtualenv, so it needs only the stdlib and redis-py.

Task body (the same for every queue): if the job carries an enqueue timestamp ``t0``,
RPUSH ``now - t0`` to ``bench:lat``; then INCR ``bench:done`` (one round trip).

Drivers are modules with a ``COMMANDS`` dict, run as
``python -c "import benchtask; benchtask.run()" X_peer COMMAND ...`` (so that the task's
module is ``X_peer`` in the producer as in the worker, never ``__main__``). Each command
prints one JSON line:
    enqueue N MAXSEC   time up to N single enqueues (stops after MAXSEC seconds)
    bulk N MAXSEC      the same with the library's bulk API ({"na": reason} if none)
    fill N             enqueue N jobs as fast as possible (untimed by the caller)
    send K GAP_MS      K jobs GAP_MS apart on an absolute schedule, each carrying t0
    setup              create the schema (SQL brokers)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

DONE = "bench:done"
LAT = "bench:lat"
USER = "user-{:06d}"

_client: Any = None
_client_pid = 0
_aclients: dict[tuple[int, int], Any] = {}


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/14")


def broker_url() -> str:
    return os.environ.get("BENCH_BROKER", "")


def client() -> Any:
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(redis_url())
        _client_pid = os.getpid()
    return _client


def record(t0: float = 0.0) -> None:
    r = client()
    if t0:
        r.rpush(LAT, repr(time.time() - t0))
    r.incr(DONE)


async def arecord(t0: float = 0.0) -> None:
    import asyncio

    import redis.asyncio as aredis

    key = (os.getpid(), id(asyncio.get_running_loop()))
    r = _aclients.get(key)
    if r is None:
        r = _aclients[key] = aredis.Redis.from_url(redis_url())
    if t0:
        await r.rpush(LAT, repr(time.time() - t0))
    await r.incr(DONE)


def timed_loop(n: int, max_seconds: float, one: Callable[[int], Any]) -> dict[str, Any]:
    one(-1)  # warm-up, untimed
    start = time.perf_counter()
    deadline = start + max_seconds
    done = 0
    for i in range(n):
        one(i)
        done += 1
        if not i % 100 and time.perf_counter() > deadline:
            break
    return {"n": done, "seconds": time.perf_counter() - start}


def timed_batches(n: int, max_seconds: float, batch: int,
                  many: Callable[[range], Any]) -> dict[str, Any]:
    many(range(-1, 0))
    start = time.perf_counter()
    deadline = start + max_seconds
    done = 0
    for lo in range(0, n, batch):
        ids = range(lo, min(lo + batch, n))
        many(ids)
        done += len(ids)
        if time.perf_counter() > deadline:
            break
    return {"n": done, "seconds": time.perf_counter() - start}


def send_schedule(k: int, gap_ms: float, one: Callable[[int, float], Any]) -> dict[str, Any]:
    """One job every gap_ms on an absolute schedule; t0 is taken just before enqueue."""
    start = time.perf_counter() + 0.01
    for i in range(k):
        delay = start + i * gap_ms / 1000 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        one(i, time.time())
    return {"sent": k}


async def asend_schedule(k: int, gap_ms: float, one: Callable[[int, float], Any]
                         ) -> dict[str, Any]:
    import asyncio

    start = time.perf_counter() + 0.01
    for i in range(k):
        delay = start + i * gap_ms / 1000 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await one(i, time.time())
    return {"sent": k}


def run() -> None:
    import importlib

    module, name, *args = sys.argv[1:]
    commands: dict[str, Callable[..., dict[str, Any]]] = importlib.import_module(module).COMMANDS
    fn = commands.get(name)
    if fn is None:
        out: dict[str, Any] = {"na": f"no {name!r} in this driver"}
    else:
        out = fn(*[float(a) if "." in a else int(a) for a in args])
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
