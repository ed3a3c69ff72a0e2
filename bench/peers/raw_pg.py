"""The PostgreSQL floor: no framework, one process, autocommit.

Claim 100 with ``FOR UPDATE SKIP LOCKED`` in one statement, run them, finish all 100 in
one statement. Run in the project's interpreter (psycopg + redis).
Worker: ``python -c "import raw_pg; raw_pg.work()"``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import psycopg
from benchtask import USER, record, timed_batches, timed_loop

BATCH = 100
SCHEMA = os.environ.get("BENCH_SCHEMA", "bench_raw")
DSN = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _conn() -> psycopg.Connection[Any]:
    conn = psycopg.connect(DSN, autocommit=True, options=f"-c search_path={SCHEMA}")
    conn.execute("""CREATE TABLE IF NOT EXISTS jobs (
        id bigserial PRIMARY KEY, task text NOT NULL, args jsonb NOT NULL,
        status smallint NOT NULL DEFAULT 0)""")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (id) WHERE status = 0")
    return conn


def _insert(conn: psycopg.Connection[Any], ids: range) -> None:
    conn.execute("INSERT INTO jobs (task, args) SELECT 'noop', a FROM unnest(%s::jsonb[]) a",
                 ([json.dumps([i, USER.format(i)]) for i in ids],))


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    conn = _conn()
    return timed_loop(n, max_seconds, lambda i: conn.execute(
        "INSERT INTO jobs (task, args) VALUES ('noop', %s)",
        (json.dumps([i, USER.format(i)]),)))


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    conn = _conn()
    return timed_batches(n, max_seconds, 1000, lambda ids: _insert(conn, ids))


def fill(n: int) -> dict[str, Any]:
    return bulk(n, 1e9)  # no time limit


def setup() -> dict[str, Any]:
    _conn().close()
    return {"ok": True}


def work() -> None:
    conn = _conn()
    while True:
        rows = conn.execute(
            "UPDATE jobs SET status = 1 WHERE id IN (SELECT id FROM jobs WHERE status = 0 "
            "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id, args",
            (BATCH,)).fetchall()
        if not rows:
            time.sleep(0.001)
            continue
        for _job_id, args in rows:
            _i, _s = args
            record()
        conn.execute("UPDATE jobs SET status = 2 WHERE id = ANY(%s)", ([r[0] for r in rows],))


COMMANDS = {"setup": setup, "enqueue": enqueue, "bulk": bulk, "fill": fill}
