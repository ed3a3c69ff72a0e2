"""T-06: jobs running 3x the lease, sleeping or spinning the CPU in pure Python, are
never run twice: the heartbeat thread keeps their lease without the task yielding."""

from __future__ import annotations

from pathlib import Path

import pytest

from chervil.job import JobStatus

from .conftest import Backend
from .harness import Cluster, new_seed, read_ledger, wait_terminal

pytestmark = pytest.mark.slow

# The heartbeat renews every third of a lease, so a lease lapses only when its thread is
# held up for two thirds of one. With 1 s, a stall of this shared 2-core machine once held
# it up that long and all six leases lapsed together (the jobs' own threads were as
# stalled); 2 s keeps the test about the heartbeat, not about the machine's pauses.
LEASE = 2.0


def test_long_and_cpu_bound_jobs_keep_their_lease(backend: Backend, tmp_path: Path) -> None:
    from tests.reliability import probeapp

    c = Cluster(tmp_path, backend.url, new_seed(), lease=LEASE)
    app = probeapp.build(backend.url)
    try:
        probe = app.tasks["probe"]
        handles = [probe.enqueue(f"sleep{i}", 3000 * LEASE + 500) for i in range(3)]
        handles += [probe.enqueue(f"spin{i}", 3000 * LEASE + 500, 0, True) for i in range(3)]
        worker = c.worker("-p", "1", "-t", "6", "--no-scheduler")
        broker = c.broker()
        jobs = wait_terminal(broker, [h.id for h in handles])
        runs, effects, ignored = read_ledger(c.ledger_path)
        assert [(j.status, j.attempts, j.lost_leases) for j in jobs] == [
            (JobStatus.SUCCEEDED, 1, 0)] * 6, (
            [(j.id, j.attempts, j.last_error) for j in jobs if j.attempts != 1],
            c.log_text()[-3000:])
        assert sorted(r.key for r in runs) == sorted(
            [f"sleep{i}" for i in range(3)] + [f"spin{i}" for i in range(3)])
        assert all(r.end - r.start >= 3 * LEASE for r in runs if r.end)
        assert len(effects) == 6 and ignored == []
        assert "lease lost" not in c.log_text()
        assert worker.poll() is None
    finally:
        app.close()
        c.close()
