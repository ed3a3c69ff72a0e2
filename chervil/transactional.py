"""Enqueue inside the caller's database transaction, and the outbox for Redis.

``task.enqueue(..., connection=conn)`` writes the job with the caller's own connection,
inside its open transaction: workers see it only after the caller commits, and a
rollback removes it. ``conn`` may be a psycopg connection (PostgreSQL broker), a
``sqlite3.Connection`` to the broker's own file (SQLite broker), a SQLAlchemy ``Session``
or ``Connection`` over either, or Django's ``connection``.

With a Redis broker there is no shared transaction, so an *outbox* makes the same
promise: the job is written to the table ``chervil_outbox`` in the app's own database
(``Chervil(..., outbox_url="postgresql://..." or "sqlite:///app.db")``) inside the
caller's transaction, and a relay (``chervil relay``, or a thread in every worker under a
broker lease, one active at a time) moves committed rows to Redis, then deletes them. A
relay that dies between the two moves the same rows again; Redis enqueue is idempotent by
job id, so a job exists in Redis once, if and only if the app's transaction committed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from .brokers.base import NewJob
from .errors import ConfigurationError

if TYPE_CHECKING:
    from .app import Chervil

log = logging.getLogger("chervil.outbox")

RELAY_LEASE = "chervil:relay"
CREATE_SQL = ("CREATE TABLE IF NOT EXISTS chervil_outbox (id TEXT PRIMARY KEY, "
              "job TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)")


def driver_connection(conn: Any) -> Any:
    """The DB-API connection behind a SQLAlchemy Session/Connection or Django's wrapper."""
    if hasattr(conn, "get_bind") and hasattr(conn, "connection"):  # SQLAlchemy Session
        conn = conn.connection()
    if hasattr(conn, "connection") and hasattr(conn.connection, "driver_connection"):
        return conn.connection.driver_connection  # SQLAlchemy Connection
    if hasattr(conn, "ensure_connection") and hasattr(conn, "connection"):  # Django
        conn.ensure_connection()
        return conn.connection
    return conn


def _is_sqlite(conn: Any) -> bool:
    return isinstance(conn, sqlite3.Connection)


def _placeholder(conn: Any) -> str:
    return "?" if _is_sqlite(conn) else "%s"


def encode_job(job: NewJob) -> str:
    data = asdict(job)
    data["payload"] = job.payload.decode("utf-8", errors="surrogateescape")
    return json.dumps(data, separators=(",", ":"))


def decode_job(text: str) -> NewJob:
    data = json.loads(text)
    data["payload"] = data["payload"].encode("utf-8", errors="surrogateescape")
    return NewJob(**data)


def write_outbox(conn: Any, jobs: Sequence[NewJob], now: float) -> None:
    """Insert jobs into the outbox with the caller's connection (no commit)."""
    p = _placeholder(conn)
    sql = f"INSERT INTO chervil_outbox (id, job, created_at) VALUES ({p}, {p}, {p})"
    rows = [(j.id, encode_job(j), now) for j in jobs]
    try:
        cur = conn.cursor()
        cur.executemany(sql, rows)
    except Exception as exc:
        if "chervil_outbox" in str(exc):
            raise ConfigurationError(
                "the outbox table chervil_outbox is missing in the app's database; run "
                "`chervil migrate` (or Outbox.ensure_schema()) once") from exc
        raise


class Outbox:
    """The relay side: reads committed rows from the app database, enqueues, deletes."""

    def __init__(self, app: Chervil, url: str) -> None:
        self.app = app
        self.url = url
        self._kind = url.split("://", 1)[0].lower()
        if self._kind not in ("sqlite", "postgres", "postgresql"):
            raise ConfigurationError(
                f"outbox_url {url!r}: the outbox lives in PostgreSQL or SQLite "
                "(postgresql://... or sqlite:///path.db)")
        self._conn: Any = None

    def _connect(self) -> Any:
        if self._conn is None:
            if self._kind == "sqlite":
                path = self.url.split("://", 1)[1][1:]
                self._conn = sqlite3.connect(path, timeout=60, isolation_level=None,
                                             check_same_thread=False)
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA busy_timeout = 60000")
            else:
                import psycopg

                self._conn = psycopg.connect(self.url, autocommit=True)
        return self._conn

    def ensure_schema(self) -> None:
        self._connect().execute(CREATE_SQL)

    def relay_once(self, batch: int = 500) -> int:
        """Move up to ``batch`` committed jobs to the broker; return how many."""
        conn = self._connect()
        rows = conn.execute(
            f"SELECT id, job FROM chervil_outbox ORDER BY id LIMIT {int(batch)}").fetchall()
        if not rows:
            return 0
        self.app.broker.enqueue([decode_job(text) for _, text in rows])
        from .faults import crash_point

        crash_point("relay_enqueued")
        p = _placeholder(conn)
        ids = [r[0] for r in rows]
        conn.execute(f"DELETE FROM chervil_outbox WHERE id IN ({','.join([p] * len(ids))})",
                     ids)
        return len(rows)

    def run(self, stop: threading.Event, owner: str, interval: float = 0.2) -> None:
        """Relay until ``stop``, one relay active at a time under a broker lease."""
        self.ensure_schema()
        lease = max(5.0, self.app.settings.scheduler_lease_seconds)
        while not stop.is_set():
            try:
                if self.app.broker.acquire_lease(RELAY_LEASE, owner, lease):
                    while self.relay_once() and not stop.is_set():
                        pass
            except Exception as exc:
                log.warning("outbox relay failed (%s: %s); retrying", type(exc).__name__, exc)
                self.close()
            stop.wait(interval)
        self.close()

    def pending(self) -> int:
        return int(self._connect().execute("SELECT COUNT(*) FROM chervil_outbox").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
