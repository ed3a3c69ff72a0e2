"""Five scheduler processes, the active one SIGKILLed again and again: every tick is
enqueued exactly once, and none is missed while one scheduler lives. On every broker."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from chervil.brokers.base import JobFilter

from .conftest import HERE, Env, wait_for

pytestmark = pytest.mark.slow


def test_schedulers_fire_each_tick_once(env: Callable[..., Env], tmp_path: Path,
                                        broker_url: str) -> None:
    e = env(scheduler_lease_seconds="2", broker_url=broker_url)
    app = e.app()
    procs: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}

    def start() -> None:
        log = tmp_path / f"scheduler-{len(procs)}.log"
        with open(log, "wb") as out:
            p = subprocess.Popen([sys.executable, "-m", "chervil.cli", "scheduler",
                                  "cronapp:app", "--log-level", "INFO"], env=e.env,
                                 cwd=str(HERE), stdout=out, stderr=subprocess.STDOUT)
        procs[p.pid] = (p, log)
        e.procs.append(p)

    def holder() -> int | None:
        """The live scheduler that took the lead last (each logs when it does)."""
        latest: tuple[str, int] | None = None
        for pid, (p, log) in procs.items():
            if p.poll() is not None:
                continue
            for line in log.read_text(errors="replace").splitlines():
                if "took the lead" in line and (latest is None or line[:23] > latest[0]):
                    latest = (line[:23], pid)
        return latest[1] if latest else None

    for _ in range(5):
        start()
    for _ in range(3):
        pid = wait_for(holder, timeout=30, what="an active scheduler")
        time.sleep(2.5)
        os.kill(pid, signal.SIGKILL)
        procs[pid][0].wait()
        start()  # a replacement, as a process manager would
    wait_for(holder, timeout=30, what="a scheduler after the last kill")
    time.sleep(3)
    for p, _ in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p, _ in procs.values():
        p.wait(timeout=30)
    keys = [j.unique_key or "" for j in app.broker.list_jobs(JobFilter(), limit=10_000)]
    assert len(keys) == len(set(keys)), "a tick was enqueued twice"
    fires = sorted(datetime.fromisoformat(k.split(":", 2)[2]).timestamp() for k in keys)
    assert len(fires) >= 10
    gaps = [b - a for a, b in itertools.pairwise(fires)]
    assert all(abs(g - 1.0) < 1e-6 for g in gaps), "a tick was missed"
    app.close()
