"""The kill soak (T-01): producers and workers on one broker, SIGKILLs every 0.5-3 s.

Shared by ``test_kill_soak.py`` (a short tier in CI) and ``scripts/soak`` (long runs).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from .harness import TERMINAL, Cluster, Report, check, read_produced


@dataclass
class SoakResult:
    report: Report
    kills: int
    restarts: int
    drain_after_last_kill: float
    bound: float
    supervisors_alive: bool
    directory: Path

    def table(self) -> str:
        return "\n".join([
            self.report.table(),
            f"  {'kills (child / whole worker)':<32} {self.kills}",
            f"  {'worker restarts':<32} {self.restarts}",
            f"  {'terminal after last kill (s)':<32} {self.drain_after_last_kill:.1f} "
            f"(bound {self.bound:.1f})",
            f"  {'run directory':<32} {self.directory}"])


def run_soak(tmp: Path, url: str, seed: int, seconds: float, *, workers: int = 3,
             processes: int = 2, threads: int = 4, producers: int = 2,
             rate: float = 20.0, lease: float = 2.0) -> SoakResult:
    rng = random.Random(seed)
    print(f"soak: seed {seed}, {seconds:.0f} s on {url}, run directory {tmp}", flush=True)
    c = Cluster(tmp, url, seed, lease=lease)
    try:
        ws = [c.worker("-p", str(processes), "-t", str(threads), "--no-scheduler")
              for _ in range(workers)]
        produce_for = max(5.0, seconds - 6.0)
        for i in range(producers):
            c.producer(f"p{i}", int(rate * produce_for), rate, batch=1 if i % 2 == 0 else 5)
        start = time.monotonic()
        kills = restarts = 0
        last_kill = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(rng.uniform(0.5, 3.0))
            i = rng.randrange(workers)
            if rng.random() < 0.3:
                c.kill_group(ws[i])
                kills += 1
                last_kill = time.monotonic()
                time.sleep(rng.uniform(0.0, 1.0))
                ws[i] = c.worker("-p", str(processes), "-t", str(threads), "--no-scheduler")
                restarts += 1
            elif c.kill_child(ws[i]):
                kills += 1
                last_kill = time.monotonic()
        for p in c.procs:
            if p.args[1].endswith("producer.py"):  # type: ignore[index]
                p.wait(timeout=120)
        _, ok, _ = read_produced(c.producer_logs)
        broker = c.broker()
        # terminal within lease + sweep after the last kill, plus the backlog's run time
        sweep = max(0.2, lease / 3)
        bound = lease + sweep + 30.0

        left = sorted(ok)
        deadline = last_kill + bound
        while time.monotonic() < deadline and left:
            left = [i for i in left if (j := broker.get(i)) is None
                    or j.status not in TERMINAL]
            if left:
                time.sleep(0.2)
        drained = time.monotonic() - last_kill
        alive = all(w.poll() is None for w in ws)
        report = check(c)  # jobs still not terminal are listed as lost
        return SoakResult(report, kills, restarts, drained, bound, alive, tmp)
    finally:
        c.close()
