"""The SQLite file behind the broker: connections, transactions, migrations.

One connection per thread, WAL journal, ``synchronous`` as configured. Every write runs
in ``BEGIN IMMEDIATE`` (a transaction never upgrades a read lock, so never deadlocks),
after taking a lock file beside the database: writers of one file on one host queue in
the kernel, which wakes the next one the moment the lock is free, where SQLite's busy
handler would sleep in steps of up to 100 ms. A long ``busy_timeout`` and a retry loop
keep "database is locked" from reaching callers (``BrokerUnavailable`` after the timeout).
The schema: numbered ``sql/sqlite_NNNN_*.sql`` migrations, tracked by ``user_version``.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..errors import BrokerUnavailable
from .sqlfile import migrations
from .wake import Waiter

T = TypeVar("T")


def _statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (trigger bodies stay whole)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") for ln in buf.strip().splitlines()):
        out.append(buf.strip())
    return out


class SQLiteDatabase:
    def __init__(self, path: str, synchronous: str, busy_timeout: float) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock_fds: list[int] = []
        self._waiters: list[Waiter] = []
        self._conns_lock = threading.Lock()
        self._migrated = False

    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self.retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
            if not self._migrated:
                self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        def run() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for number, script in migrations("sqlite"):
                    if number > version:
                        for statement in _statements(script):
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self.retry(run)
        self._migrated = True

    def retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying while the database is busy, up to ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                msg = str(exc)
                if "locked" not in msg and "busy" not in msg:
                    raise
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"SQLite file {self.path} stayed locked for {self.busy_timeout:.0f} s; "
                        "is another program holding a long write transaction?") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self.conn()
        lock_fd = self._lock_fd()

        def run() -> T:
            # Writers of this file on this host queue on a lock file first: the kernel
            # wakes the next one the moment the lock is free, where SQLite's own busy
            # handler would sleep in steps of up to 100 ms.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return out
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        return self.retry(run)

    def _lock_fd(self) -> int:
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is None:
            fd = os.open(self.path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
            self._local.lock_fd = fd
            with self._conns_lock:
                self._lock_fds.append(fd)
        return fd

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.conn()
        return self.retry(lambda: conn.execute(sql, params).fetchall())

    def waiter(self, directory: str) -> Waiter:
        """This thread's wake-up socket (see ``wake.py``)."""
        waiter: Waiter | None = getattr(self._local, "waiter", None)
        if waiter is None:
            waiter = self._local.waiter = Waiter(directory)
            with self._conns_lock:
                self._waiters.append(waiter)
        return waiter

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
            for fd in self._lock_fds:
                os.close(fd)
            self._lock_fds.clear()
            for waiter in self._waiters:
                waiter.close()
            self._waiters.clear()
        self._local = threading.local()
        self._migrated = False
