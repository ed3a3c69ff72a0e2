"""T-09: SQLite contention. 8 worker processes and 4 producers on one file, plus a
reader holding long read transactions (which pin the WAL against checkpoints).

Pass: no "database is locked" reaching a producer, a task or a log; zero lost (and the
checker's other zeros); ``PRAGMA integrity_check`` ok; the WAL file stays bounded.
``CHERVIL_CONTENTION_SECONDS`` sets the length (default 35 s in CI).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from .harness import TERMINAL, Cluster, check, new_seed, read_produced, wait_for

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("CHERVIL_CONTENTION_SECONDS", "35"))
WAL_LIMIT = 64 * 2**20


def reader(db: Path, stop: threading.Event, held: list[float]) -> None:
    """Hold a read transaction for 5 s, pause 1 s, again (as a slow dashboard would)."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    try:
        while not stop.is_set():
            try:
                conn.execute("BEGIN")
                conn.execute("SELECT COUNT(*), MAX(id) FROM chervil_jobs").fetchone()
                t = time.monotonic()
                stop.wait(5.0)
                conn.execute("COMMIT")
                held.append(time.monotonic() - t)
            except sqlite3.OperationalError:  # the table is not created yet
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            stop.wait(1.0)
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_sqlite_contention(tmp_path: Path) -> None:
    seed = new_seed()
    c = Cluster(tmp_path, f"sqlite:///{tmp_path}/broker.db", seed)
    db = tmp_path / "broker.db"
    wal = Path(f"{db}-wal")
    stop = threading.Event()
    held: list[float] = []
    try:
        ws = [c.worker("-p", "1", "-t", "4", "--no-scheduler") for _ in range(8)]
        producers = [c.producer(f"p{i}", int(15 * SECONDS), 15, batch=1 if i % 2 else 5)
                     for i in range(4)]
        t = threading.Thread(target=reader, args=(db, stop, held), daemon=True)
        t.start()
        wal_max = 0
        while any(p.poll() is None for p in producers):
            wal_max = max(wal_max, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.2)
        _, ok, failed = read_produced(c.producer_logs)
        broker = c.broker()

        def drained() -> bool:
            nonlocal wal_max
            wal_max = max(wal_max, wal.stat().st_size if wal.exists() else 0)
            return all((j := broker.get(i)) is not None and j.status in TERMINAL for i in ok)

        wait_for(drained, timeout=120, what="every job to end", every=1.0)
        stop.set()
        t.join(10)
        report = check(c)
        print(report.table())
        print(f"  {'WAL max size (MiB)':<32} {wal_max / 2**20:.1f}")
        print(f"  {'reader transactions held':<32} {len(held)}")
        conn = sqlite3.connect(db, timeout=60)
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
        where = f"seed {seed}; logs in {tmp_path}"
        assert report.violations() == {}, where
        assert failed == set(), where
        assert len(ok) >= 1000, where
        assert integrity == "ok", where
        assert "locked" not in c.log_text().lower(), where
        assert wal_max < WAL_LIMIT, f"WAL grew to {wal_max} bytes; {where}"
        assert len(held) >= 3, "the reader never held its transaction"
        assert all(w.poll() is None for w in ws)
    finally:
        stop.set()
        c.close()
