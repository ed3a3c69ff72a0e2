"""Four producer processes and two workers on one SQLite file: nothing lost, nothing
run twice without a lost lease, no "database is locked" reaching anyone."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from chervil import JobStatus

from .conftest import Env, wait_for

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("CHERVIL_TEST_CONTENTION_SECONDS", "30"))

PRODUCER = """
import os, sys, time
sys.path.insert(0, os.getcwd())
import itapp
app = itapp.build(os.environ["CHERVIL_BROKER_URL"])
probe = app.tasks["probe"]
out = open(sys.argv[1], "a", buffering=1)
end = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < end:
    if i % 10 == 9:
        handles = app.enqueue_many([probe.prepare(f"{sys.argv[3]}-{i}-{k}") for k in range(20)])
        out.write("".join(h.id + "\\n" for h in handles))
    else:
        out.write(probe.enqueue(f"{sys.argv[3]}-{i}").id + "\\n")
    i += 1
    time.sleep(0.02)
out.close()
"""


def test_producers_and_workers_share_one_file(env: Callable[..., Env], tmp_path: Path) -> None:
    e = env()
    app = e.app()
    workers = [e.worker("-p", "1", "-t", "4") for _ in range(2)]
    outs = [tmp_path / f"producer-{i}.ids" for i in range(4)]
    producers = [e.spawn(PRODUCER.replace("sys.argv[1]", repr(str(out)))
                         .replace("sys.argv[2]", repr(str(SECONDS)))
                         .replace("sys.argv[3]", repr(f"p{i}")))
                 for i, out in enumerate(outs)]
    for p in producers:
        assert p.wait(timeout=SECONDS + 60) == 0

    ids = [line for out in outs for line in out.read_text().split()]
    assert len(ids) > 1000
    conn = sqlite3.connect(e.db, timeout=60)

    def all_done() -> bool:
        row = conn.execute("SELECT COUNT(*) FROM chervil_jobs WHERE status != 'succeeded'")
        return row.fetchone()[0] == 0

    wait_for(all_done, timeout=120, what="every job to succeed")

    stored = dict(conn.execute("SELECT id, lost_leases FROM chervil_jobs").fetchall())
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert set(ids) == set(stored), "a job enqueued with success is missing"
    runs = Counter(r[0] for r in e.ledger())
    assert set(runs) == set(ids)
    twice = [i for i, n in runs.items() if n > 1 and stored[i] == 0]
    assert twice == [], "jobs ran twice without losing a lease"
    for w in workers:
        os.kill(w.pid, signal.SIGTERM)
    for w in workers:
        assert w.wait(timeout=30) == 0
    assert "locked" not in e.log_text()
    assert app.broker.queue_stats()[0].counts == {JobStatus.SUCCEEDED.value: len(ids)}
