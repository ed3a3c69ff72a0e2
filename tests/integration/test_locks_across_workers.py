"""A lock across real worker processes: never two jobs of one key at once, on each broker."""

from __future__ import annotations

import itertools
import sqlite3
from collections import defaultdict
from collections.abc import Callable

import pytest

from chervil import JobStatus

from .conftest import Env, wait_for

pytestmark = pytest.mark.slow


def test_two_workers_never_run_two_jobs_of_one_lock_key_at_once(
        env: Callable[..., Env], broker_url: str) -> None:
    """Two worker processes of four threads, 80 jobs over 4 lock keys among 40 plain ones:
    each job runs once, and the runs of one key, as the tasks themselves record them (start
    after the reserve committed, end before the finish was sent), never overlap."""
    e = env(broker_url=broker_url)
    app = e.app()
    locked = [app.tasks["locked"].prepare(f"k{i % 4}", 0.02) for i in range(80)]
    plain = [app.tasks["probe"].prepare(f"p{i}") for i in range(40)]
    handles = app.enqueue_many([j for pair in zip(locked[::2], locked[1::2], plain,
                                                  strict=True) for j in pair])
    e.worker("-p", "1", "-t", "4")
    e.worker("-p", "1", "-t", "4")
    wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED for h in handles), timeout=60,
             what="every job")
    conn = sqlite3.connect(e.ledger_path)
    try:
        rows = conn.execute("SELECT job, key, at FROM ledger").fetchall()
    finally:
        conn.close()
    runs: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for job, key, at in rows:
        if key.startswith("k"):
            runs[key].setdefault(job, []).append(at)
    assert sorted(runs) == ["k0", "k1", "k2", "k3"]
    for key, by_job in runs.items():
        assert len(by_job) == 20 and all(len(t) == 2 for t in by_job.values()), key
        spans = sorted((min(t), max(t)) for t in by_job.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two jobs of {key} ran at once"
    assert sum(1 for r in rows if r[1].startswith("p")) == 40
