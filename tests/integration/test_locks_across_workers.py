"""A lock across real worker processes: never two jobs of one key at once, on each broker."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import time
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
    runs = key_runs(e, until=float("inf"))
    assert sorted(k for k in runs if k.startswith("k")) == ["k0", "k1", "k2", "k3"]
    for key in ("k0", "k1", "k2", "k3"):  # each job once, from start to end
        assert len(runs[key]) == 20 and all("end" in r for r in runs[key].values()), key
    assert sum(1 for k in runs if k.startswith("p")) == 40

def test_a_lock_held_by_a_killed_worker_frees_and_runs_never_overlap(
        env: Callable[..., Env], broker_url: str) -> None:
    """A worker SIGKILLed while it runs jobs of lock keys: its locks free when its leases
    are recovered, every job ends succeeded, and the runs of one key never overlap (a run
    cut by the kill counts as running until the kill)."""
    e = env(broker_url=broker_url, lease_seconds="3")
    app = e.app()
    handles = app.enqueue_many([app.tasks["locked"].prepare(f"k{i % 6}", 0.05)
                                for i in range(120)])
    doomed = e.worker("-p", "1", "-t", "4")
    e.worker("-p", "1", "-t", "4")
    wait_for(lambda: sum(r[2] == "start" for r in e.ledger()) >= 20, what="jobs under way")
    os.killpg(doomed.pid, signal.SIGKILL)
    killed_at = time.time()
    wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED for h in handles), timeout=90,
             what="every job, the killed worker's too")
    key_runs(e, until=killed_at)


def key_runs(e: Env, until: float) -> dict[str, dict[tuple[str, int], dict[str, float]]]:
    """The runs the tasks recorded, per key, per (job, process): their start and end times.
    Checks that the runs of one key never overlap; a run with no end (its process killed)
    counts as running until ``until``."""
    conn = sqlite3.connect(e.ledger_path)
    try:
        rows = conn.execute("SELECT job, key, event, pid, at FROM ledger").fetchall()
    finally:
        conn.close()
    runs: dict[str, dict[tuple[str, int], dict[str, float]]] = defaultdict(dict)
    for job, key, event, pid, at in rows:
        runs[key].setdefault((job, pid), {})[event] = at
    for key, by_run in runs.items():
        spans = sorted((r.get("start", r.get("run", 0.0)), r.get("end", until))
                       for r in by_run.values())
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two jobs of {key} ran at once"
    return runs
