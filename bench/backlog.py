"""Backlog mode: does a backlog that may not run slow down the rest of its queue?

``python -m bench backlog [--broker sqlite|redis|postgres] [--quick]``: for each broker,
N jobs that may not run now, then 20,000 plain jobs behind them in the same queue; the N
jobs are behind one held lock (``lock="acct:1"``, one of them running), of a paused task,
or of a rate-limited task whose bucket is empty (``rate_limit="1/m"``, one of them taken).
Reported, for N = 2,000 and N = 100,000 (20,000 with --quick):

- the reserves, and the time, until a reserve of 8 comes back full: the broker stepping
  over (or parking) the backlog once;
- then the reserve latency of a batch of 8 plain jobs (median of 50), and its ratio
  between the two backlogs: 1.0 means the backlog costs the other jobs nothing. On
  PostgreSQL again after a VACUUM of the jobs table (what autovacuum does shortly after):
  until then, reserve's index still holds an entry for each parked job's old row
  version, marked dead as scans meet it.

In-process, through the broker API (no worker, no peers): a property of chervil's storage
layout, like ``scale``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from chervil import Chervil

from .configs import BROKERS, PG_URL, REDIS_URL
from .report import log, write_results

SIZES = (2_000, 100_000)
QUICK_SIZES = (2_000, 20_000)
PLAIN = 20_000  # enough for the reserves that take some while the backlog is parked
MAX_RESERVES = 10_000
SAMPLES = 50
KINDS = {"lock": "behind one held lock", "paused": "of a paused task",
         "rate": "of an empty bucket"}


def _url(broker: str, tmp: Path, tag: str) -> str:
    if broker == "sqlite":
        return f"sqlite:///{tmp / tag}.db"
    if broker == "redis":
        return f"{REDIS_URL}?prefix=bench-backlog-{tag}"
    return f"{PG_URL}?schema=bench_backlog_{tag}"


def _drop(app: Chervil, broker: str, tag: str) -> None:
    if broker == "redis":
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        for key in r.scan_iter(f"bench-backlog-{tag}:*", count=10_000):
            r.delete(key)
    elif broker == "postgres":
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS bench_backlog_{tag} CASCADE")


def _reserve_p50(b: Any) -> float:
    times = []
    for _ in range(SAMPLES):
        t = time.perf_counter()
        got = b.reserve(["q"], 8, "bench", 600)
        times.append(time.perf_counter() - t)
        assert len(got) == 8 and all(j.task == "other" for j in got)
    return round(statistics.median(times) * 1000, 3)


def measure(broker: str, kind: str, n: int, tmp: Path) -> dict[str, Any]:
    tag = f"{broker}{kind}{n}"
    app = Chervil(_url(broker, tmp, tag))
    _drop(app, broker, tag)

    held: dict[str, Any] = {"lock": {"lock": "acct:{a}"}, "rate": {"rate_limit": "1/m"},
                            "paused": {}}

    @app.task(name="hot", queue="q", **held[kind])
    def hot(a: int) -> None: ...

    @app.task(name="other", queue="q")
    def other(a: int) -> None: ...

    b = app.broker
    try:
        for i in range(0, n, 1000):
            app.enqueue_many([hot.prepare(1) for _ in range(min(1000, n - i))])
        app.enqueue_many([other.prepare(i) for i in range(PLAIN)])
        if kind in ("lock", "rate"):
            [first] = b.reserve(["q"], 1, "bench", 600)
            assert first.task == "hot"
        else:
            b.set_task_paused("hot", True)
        t0, reserves = time.perf_counter(), 0
        while len(b.reserve(["q"], 8, "bench", 600)) < 8:
            reserves += 1
            if reserves > MAX_RESERVES:
                raise RuntimeError(f"{broker} {kind} {n}: no full reserve in {reserves}")
        reserves += 1
        clear_s = time.perf_counter() - t0
        out = {"kind": kind, "backlog": n, "reserves_to_clear": reserves,
               "clear_s": round(clear_s, 3), "reserve_ms_p50": _reserve_p50(b)}
        if broker == "postgres":  # what autovacuum leaves: the parked rows' old index entries gone
            import psycopg

            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"VACUUM bench_backlog_{tag}.jobs")
            out["reserve_ms_p50_vacuumed"] = _reserve_p50(b)
        return out
    finally:
        _drop(app, broker, tag)
        app.close()


def run_backlog(args: argparse.Namespace) -> None:
    sizes = QUICK_SIZES if args.quick else SIZES
    brokers = [args.broker] if args.broker else list(BROKERS)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for broker in brokers:
            for kind in KINDS:
                for n in sizes:
                    log(f"{broker}: {n:,} jobs {KINDS[kind]}")
                    rows.append({"broker": broker, **measure(broker, kind, n, Path(tmp))})
    lines = [f"### a backlog that may not run: reserve of 8 other jobs "
             f"({PLAIN:,} behind it), median of {SAMPLES}", "",
             "| broker | backlog | reserves to clear | time to clear s | reserve p50 ms "
             "| x smallest | after VACUUM ms | x smallest |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        base = next(r for r in rows if r["broker"] == row["broker"] and r["kind"] == row["kind"])
        ratio = row["reserve_ms_p50"] / base["reserve_ms_p50"]
        row["ratio_to_smallest"] = round(ratio, 2)
        vac = "n/a | n/a"
        if "reserve_ms_p50_vacuumed" in row:
            vratio = row["reserve_ms_p50_vacuumed"] / base["reserve_ms_p50_vacuumed"]
            row["ratio_to_smallest_vacuumed"] = round(vratio, 2)
            vac = f"{row['reserve_ms_p50_vacuumed']} | {vratio:.2f}"
        lines.append(f"| {row['broker']} | {row['backlog']:,} {KINDS[row['kind']]} "
                     f"| {row['reserves_to_clear']} "
                     f"| {row['clear_s']} | {row['reserve_ms_p50']} | {ratio:.2f} | {vac} |")
    print("\n".join(lines))
    if not args.no_write:
        write_results({"mode": "backlog", "rows": rows, "table": lines}, "backlog",
                      args.latest)
