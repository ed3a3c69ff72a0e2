"""The app real worker processes run in integration tests.

Its tasks write to an external ledger (a separate SQLite file named by
CHERVIL_TEST_LEDGER, never the broker), so tests can check what really ran.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

from chervil import Chervil, Retry, current_job
from chervil.clock import Clock

_local = threading.local()


def ledger(event: str, key: str) -> None:
    job = current_job()
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(os.environ["CHERVIL_TEST_LEDGER"], timeout=60,
                               isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS ledger (job TEXT, key TEXT, event TEXT, "
                     "attempt INT, pid INT, at REAL)")
        _local.conn = conn
    conn.execute("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?)",
                 (job.id if job else None, key, event, job.attempt if job else 0,
                  os.getpid(), time.time()))


def sleepy(key: str, seconds: float) -> None:
    ledger("start", key)
    time.sleep(seconds)
    ledger("end", key)


def hang(key: str) -> None:
    ledger("start", key)
    time.sleep(60)


def probe(key: str) -> None:
    ledger("run", key)


def hog(key: str, mb: int) -> None:
    ledger("start", key)
    hoard = [bytearray(1024 * 1024) for _ in range(mb)]
    time.sleep(30)
    del hoard


def build(url: str | None = None, clock: Clock | None = None) -> Chervil:
    """The app with its tasks: workers use ``app``; tests build one for their own file."""
    a = Chervil(url, clock=clock)
    a.task(name="sleepy", retry=Retry(max_attempts=5, backoff=0.1))(sleepy)
    a.task(name="hang", timeout=1.0, retry=Retry(max_attempts=2, backoff=0.1, jitter=0.0))(hang)
    a.task(name="probe", retry=Retry(max_attempts=5, backoff=0.05))(probe)
    a.task(name="urgent", queue="critical")(probe)
    a.task(name="hog", retry=Retry(max_attempts=10))(hog)
    a.task(name="bulk", queue="batch")(sleepy)
    a.task(name="locked", lock="acct:{key}")(sleepy)
    return a


app = build()
