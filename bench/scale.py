"""Scale mode: does chervil slow down as its tables or keys grow?

``python -m bench scale --broker sqlite|redis|postgres``:

- drain rate of the first 10,000 jobs with 10,000 waiting vs with 1,000,000 waiting (or
  as many as ``enqueue_many`` fills in ~2 minutes), and the ratio;
- for sqlite and postgres: reserve latency (one job) and ``queue_stats()`` time with
  10,000 vs 1,000,000 finished (succeeded) rows in the table, and the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from typing import Any

from chervil import Chervil

from .configs import LIBS, PG_URL, REDIS_URL
from .measure import DriverError, Lib, Variant, drain, rclient
from .report import RESULTS
from .report import log as _log
from .venvs import PEERS_DIR

TARGET = 10_000
SMALL, LARGE = 10_000, 1_000_000
FILL_SECONDS = 120.0


def _chervil(broker: str) -> tuple[Lib, list[Variant]]:
    for key, build in LIBS[broker](set()):
        if key == "chervil":
            return build()[0]
    raise RuntimeError("no chervil config")


def _fill_finished(app: Chervil, broker: str, schema: str, k: int) -> None:
    """k succeeded rows, copied from one template job by SQL (fast, and untimed)."""
    from chervil_peer import noop

    tid = app.enqueue_many([noop.prepare(0, "user-000000")])[0].id
    now = time.time()
    if broker == "sqlite":
        import sqlite3

        path = app.settings.broker_url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        cols = [r[1] for r in conn.execute("PRAGMA table_info(chervil_jobs)")
                if r[1] not in ("id", "status", "finished_at")]
        c = ", ".join(cols)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            f"INSERT INTO chervil_jobs (id, status, finished_at, {c}) "
            "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < ?) "
            f"SELECT printf('fin-%09d', x), 'succeeded', ?, {c} FROM seq, "
            f"(SELECT {c} FROM chervil_jobs WHERE id = ?)", (k, now, tid))
        conn.execute("DELETE FROM chervil_jobs WHERE id = ?", (tid,))
        conn.execute("COMMIT")
        conn.close()
        return
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        cols = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'jobs' ORDER BY ordinal_position", (schema,))
            if r[0] not in ("id", "status", "finished_at")]
        c = ", ".join(f'"{x}"' for x in cols)
        conn.execute(
            f'INSERT INTO "{schema}".jobs (id, status, finished_at, {c}) '
            f"SELECT 'fin-' || lpad(x::text, 9, '0'), 'succeeded', %s, {c} "
            f'FROM generate_series(1, %s) x, (SELECT {c} FROM "{schema}".jobs WHERE id = %s) t',
            (now, k, tid))
        conn.execute(f'DELETE FROM "{schema}".jobs WHERE id = %s', (tid,))
        conn.execute(f'ANALYZE "{schema}".jobs')


def _lookups(lib: Lib, broker: str, finished: int) -> dict[str, Any]:
    lib.reset(lib)
    if str(PEERS_DIR) not in sys.path:
        sys.path.insert(0, str(PEERS_DIR))  # chervil_peer imports benchtask
    app = Chervil(lib.env["CHERVIL_BROKER_URL"])
    import chervil_peer

    chervil_peer.app = app
    chervil_peer.noop.app = app
    t = time.perf_counter()
    _fill_finished(app, broker, lib.env.get("BENCH_SCHEMA", ""), finished)
    fill_s = time.perf_counter() - t
    app.enqueue_many([chervil_peer.noop.prepare(i, "user-000000") for i in range(50)])
    reserve_ms = []
    for _ in range(50):
        t = time.perf_counter()
        got = app.broker.reserve(["bench"], 1, "scale-bench", 30.0)
        reserve_ms.append((time.perf_counter() - t) * 1000)
        assert len(got) == 1, "reserve returned no job"
    stats_ms = []
    for _ in range(5):
        t = time.perf_counter()
        app.broker.queue_stats()
        stats_ms.append((time.perf_counter() - t) * 1000)
    app.close()
    return {"finished_rows": finished, "fill_s": fill_s,
            "reserve_ms_p50": statistics.median(reserve_ms), "reserve_ms_max": max(reserve_ms),
            "queue_stats_ms_p50": statistics.median(stats_ms)}


def run_scale(args: argparse.Namespace) -> None:
    broker = args.broker or "sqlite"
    small, large = (2_000, 50_000) if args.quick else (SMALL, LARGE)
    target = min(TARGET, small)
    lib, variants = _chervil(broker)
    variant = variants[0]
    r = rclient(REDIS_URL)
    out: dict[str, Any] = {"broker": broker, "config": variant.label, "target": target}
    try:
        for waiting in (small, large):
            _log(f"drain first {target} with {waiting} waiting")
            res = drain(lib, variant, r, target, 300.0, waiting=waiting,
                        fill_seconds=FILL_SECONDS)
            out[f"drain_{waiting}"] = res
            _log(f"  {res['waiting']} waiting: {res['rate']:.0f}/s "
                 f"(steady {res['steady_rate'] or 0:.0f}/s)")
        a, b = out[f"drain_{small}"], out[f"drain_{large}"]
        out["drain_ratio_large_over_small"] = b["rate"] / a["rate"]
        out["steady_ratio_large_over_small"] = (
            b["steady_rate"] / a["steady_rate"] if a["steady_rate"] and b["steady_rate"]
            else None)
        if broker in ("sqlite", "postgres"):
            for finished in (small, large):
                _log(f"reserve / queue_stats with {finished} finished rows")
                out[f"lookups_{finished}"] = res = _lookups(lib, broker, finished)
                _log(f"  reserve p50 {res['reserve_ms_p50']:.2f} ms, queue_stats "
                     f"{res['queue_stats_ms_p50']:.1f} ms")
            a, b = out[f"lookups_{small}"], out[f"lookups_{large}"]
            out["reserve_ratio_large_over_small"] = b["reserve_ms_p50"] / a["reserve_ms_p50"]
            out["queue_stats_ratio_large_over_small"] = (
                b["queue_stats_ms_p50"] / a["queue_stats_ms_p50"])
    except (DriverError, OSError) as exc:
        out["failed"] = str(exc)
        _log(f"FAILED: {exc}")
    print(json.dumps({k: v for k, v in out.items() if not k.startswith(("drain_", "lookups_"))
                      or k.endswith("small")}, indent=1, default=str))
    for k, v in out.items():
        if k.startswith(("drain_", "lookups_")) and isinstance(v, dict):
            keep = ("waiting", "done", "rate", "steady_rate", "finished_rows",
                    "reserve_ms_p50", "queue_stats_ms_p50", "fill_s")
            print(k, {x: round(y, 3) if isinstance(y, float) else y
                      for x, y in v.items() if x in keep})
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{datetime.date.today().isoformat()}-scale-{broker}.json"
        path.write_text(json.dumps(out, indent=1, default=str) + "\n")
        _log(f"wrote {path}")
