"""Five scheduler processes, the active one SIGKILLed again and again: every tick is
enqueued exactly once, and none is missed while one scheduler lives."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime

import pytest

from .conftest import HERE, Env, wait_for

pytestmark = pytest.mark.slow


def test_schedulers_fire_each_tick_once(env: Callable[..., Env]) -> None:
    e = env(scheduler_lease_seconds="2")
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start() -> None:
        p = subprocess.Popen([sys.executable, "-m", "chervil.cli", "scheduler", "cronapp:app",
                              "--log-level", "WARNING"], env=e.env, cwd=str(HERE))
        procs[p.pid] = p
        e.procs.append(p)

    for _ in range(5):
        start()
    conn = sqlite3.connect(e.db, timeout=30)

    def holder() -> int | None:
        try:
            row = conn.execute("SELECT owner, until FROM chervil_leases "
                               "WHERE name = 'chervil:scheduler'").fetchone()
        except sqlite3.OperationalError:
            return None
        if row is None or row[1] < time.time():
            return None
        pid = int(row[0].rsplit(":", 1)[1])
        return pid if pid in procs and procs[pid].poll() is None else None

    kills = 0
    for _ in range(3):
        pid = wait_for(holder, timeout=30, what="an active scheduler")
        time.sleep(2.5)
        os.kill(pid, signal.SIGKILL)
        procs[pid].wait()
        kills += 1
        start()  # a replacement, as a process manager would
    wait_for(holder, timeout=30, what="a scheduler after the last kill")
    time.sleep(3)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs.values():
        p.wait(timeout=30)
    keys = [r[0] for r in conn.execute("SELECT unique_key FROM chervil_jobs")]
    conn.close()
    assert kills == 3
    assert len(keys) == len(set(keys)), "a tick was enqueued twice"
    fires = sorted(datetime.fromisoformat(k.split(":", 2)[2]).timestamp() for k in keys)
    assert len(fires) >= 10
    gaps = [b - a for a, b in itertools.pairwise(fires)]
    assert all(abs(g - 1.0) < 1e-6 for g in gaps), "a tick was missed"
