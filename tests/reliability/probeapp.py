"""The app the reliability tests' worker processes run.

Every task writes to an external ledger (``CHERVIL_RELIABILITY_LEDGER``: a SQLite file
with ``synchronous=FULL``, never the broker), so the checker sees what really ran:
one ``runs`` row per execution (job id, idempotency key, attempt, pid, lease token,
start, end, outcome) and one ``effects`` row per idempotency key (``INSERT OR IGNORE``;
an ignored insert is a re-execution whose effect was deduplicated).

The lease token is not part of ``current_job()`` (JobContext has id, task, attempt,
max_attempts only), so the probe reads it from the job record at start: right after
the reserve it is the token of this attempt.
"""

from __future__ import annotations

import ctypes
import os
import sqlite3
import threading
import time

from chervil import Chervil, Retry, current_job

_local = threading.local()

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (job TEXT, idem TEXT, key TEXT, attempt INT, pid INT,
    token TEXT, start REAL, end REAL, outcome TEXT);
CREATE TABLE IF NOT EXISTS effects (idem TEXT PRIMARY KEY, key TEXT, job TEXT, attempt INT,
    pid INT, at REAL);
CREATE TABLE IF NOT EXISTS ignored (idem TEXT, key TEXT, job TEXT, attempt INT, pid INT,
    at REAL);
"""


def connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    return conn


def _ledger() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = connect(os.environ["CHERVIL_RELIABILITY_LEDGER"])
    return conn


def _begin(key: str) -> tuple[int, str, str, int]:
    job = current_job()
    assert job is not None
    try:
        record = app.broker.get(job.id)
        token = record.lease_token if record else None
    except Exception:  # the broker may be down (outage tests): the token stays unknown
        token = None
    cur = _ledger().execute(
        "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, NULL, 'running')",
        (job.id, job.idempotency_key, key, job.attempt, os.getpid(), token, time.time()))
    return int(cur.lastrowid or 0), job.id, job.idempotency_key, job.attempt


def _end(row: int, outcome: str) -> None:
    _ledger().execute("UPDATE runs SET end = ?, outcome = ? WHERE rowid = ?",
                      (time.time(), outcome, row))


def _effect(key: str, job_id: str, idem: str, attempt: int) -> None:
    conn = _ledger()
    cur = conn.execute("INSERT OR IGNORE INTO effects VALUES (?, ?, ?, ?, ?, ?)",
                       (idem, key, job_id, attempt, os.getpid(), time.time()))
    if cur.rowcount == 0:
        conn.execute("INSERT INTO ignored VALUES (?, ?, ?, ?, ?, ?)",
                     (idem, key, job_id, attempt, os.getpid(), time.time()))


def spin(seconds: float) -> int:
    """A pure-Python loop that never sleeps or does I/O."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def probe(key: str, ms: float = 0.0, fail_attempts: int = 0, cpu: bool = False) -> None:
    """Run ``ms`` milliseconds (sleeping, or spinning with ``cpu``), failing while
    the attempt number is at most ``fail_attempts``, then apply the effect once."""
    row, job_id, idem, attempt = _begin(key)
    if cpu:
        spin(ms / 1000)
    else:
        time.sleep(ms / 1000)
    if attempt <= fail_attempts:
        _end(row, "fail")
        raise RuntimeError(f"probe {key}: planned failure on attempt {attempt}")
    _effect(key, job_id, idem, attempt)
    _end(row, "ok")


def crash(key: str, how: str) -> None:
    """A task that takes its worker child down with it."""
    row, *_ = _begin(key)
    if how == "exit":
        os._exit(3)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "loop":
        spin(3600)
    if how == "memory":  # touched pages, held: resident memory far past the cap
        hog = b"x" * (300 * 2**20)
        time.sleep(30)
        del hog
    _end(row, "ok")


def build(url: str | None = None) -> Chervil:
    a = Chervil(url)
    a.task(name="probe", retry=Retry(max_attempts=5, backoff=0.05, jitter=0.0))(probe)
    a.task(name="probe_once", retry=Retry(max_attempts=1))(probe)
    a.task(name="crash", retry=Retry(max_attempts=5, backoff=0.05, jitter=0.0))(crash)
    a.task(name="crash_limited", timeout=1.0,
           retry=Retry(max_attempts=2, backoff=0.05, jitter=0.0))(crash)
    return a


app = build()
