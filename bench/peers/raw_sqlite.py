"""The SQLite floor: no framework, one process, WAL + synchronous=FULL.

A cycle is ONE transaction that marks the previous batch done and claims the next 100
rows; the jobs run between cycles. Run in the project's interpreter (stdlib + redis).
Worker: ``python -c "import raw_sqlite; raw_sqlite.work()"``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from benchtask import USER, broker_url, record, timed_batches, timed_loop

BATCH = 100
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY, task TEXT NOT NULL, args TEXT NOT NULL,
    status INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, id);
"""


def _conn() -> sqlite3.Connection:
    conn = sqlite3.connect(broker_url(), isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    return conn


def _insert(conn: sqlite3.Connection, ids: range) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO jobs (task, args) VALUES ('noop', ?)",
                     [(json.dumps([i, USER.format(i)]),) for i in ids])
    conn.execute("COMMIT")


def enqueue(n: int, max_seconds: float) -> dict[str, Any]:
    conn = _conn()
    return timed_loop(n, max_seconds, lambda i: _insert(conn, range(i, i + 1)))


def bulk(n: int, max_seconds: float) -> dict[str, Any]:
    conn = _conn()
    return timed_batches(n, max_seconds, 1000, lambda ids: _insert(conn, ids))


def fill(n: int) -> dict[str, Any]:
    return bulk(n, 1e9)  # no time limit


def work() -> None:
    conn = _conn()
    done: list[int] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")
        if done:
            conn.execute(f"UPDATE jobs SET status = 2 WHERE id IN ({','.join('?' * len(done))})",
                         done)
        rows = conn.execute(
            "UPDATE jobs SET status = 1 WHERE id IN "
            "(SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT ?) RETURNING id, args",
            (BATCH,)).fetchall()
        conn.execute("COMMIT")
        done = []
        for job_id, args in rows:
            _i, _s = json.loads(args)
            record()
            done.append(job_id)
        if not rows:
            time.sleep(0.001)


COMMANDS = {"enqueue": enqueue, "bulk": bulk, "fill": fill}
