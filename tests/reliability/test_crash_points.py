"""T-02: every named crash point (chervil/faults.py), on every broker.

Each process is started with ``CHERVIL_CRASH_AT=<point>``, exits hard there (code 86,
as a SIGKILL would leave things), and is replaced by one started without it. Each job
then ends in exactly one correct state. The worker points run as lone worker children
(no supervisor to settle their jobs at once), so recovery goes through lease expiry.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
from datetime import datetime
from pathlib import Path

import pytest

from chervil.brokers.base import JobFilter
from chervil.faults import EXIT_CODE, POINTS
from chervil.job import Job, JobStatus

from .conftest import Backend
from .harness import TERMINAL, Cluster, new_seed, read_ledger, wait_for

pytestmark = pytest.mark.slow

# point -> (task, fail_attempts, expected status, expected executions)
WORKER_POINTS = {
    "claimed": ("probe", 0, JobStatus.SUCCEEDED, ["ok"]),
    "task_started": ("probe", 0, JobStatus.SUCCEEDED, ["ok"]),
    "before_finish": ("probe", 0, JobStatus.SUCCEEDED, ["ok", "ok"]),
    "finish_retry": ("probe", 1, JobStatus.SUCCEEDED, ["fail", "ok"]),
    "finish_dead": ("probe_once", 99, JobStatus.DEAD, ["fail", "fail"]),
}

PRODUCER = """
import sys
import probeapp
from dataclasses import replace
app = probeapp.app
call = app.tasks["probe"].prepare("after_commit", 5.0)
call = replace(call, new_job=replace(call.new_job, queue="q_after_commit"))
print("ID", call.new_job.id, flush=True)
app.enqueue_many([call])
print("RETURNED", flush=True)
"""


# Added to chervil/faults.py after these tests were written (the outbox relay); not
# exercised here yet. A point added later still fails the coverage test below.
# relay_enqueued: tests/integration/test_transactional.py crashes the outbox relay there.
COVERED_ELSEWHERE = {"relay_enqueued"}


def test_points_are_all_covered() -> None:
    assert set(WORKER_POINTS) | {"after_commit", "scheduler_tick"} | COVERED_ELSEWHERE == POINTS


def test_worker_and_producer_crash_points(backend: Backend, tmp_path: Path) -> None:
    c = Cluster(tmp_path, backend.url, new_seed(), lease=1.0)
    try:
        app_broker = c.broker()
        from tests.reliability import probeapp

        app = probeapp.build(backend.url)
        jobs = {}
        for point, (task, fail, _, _) in WORKER_POINTS.items():
            call = app.tasks[task].prepare(point, 5.0, fail)
            new = dataclasses.replace(call.new_job, queue=f"q_{point}")
            app_broker.enqueue([new])
            jobs[point] = new.id
        crashed = {point: c.child(f"q_{point}", env={"CHERVIL_CRASH_AT": point})
                   for point in WORKER_POINTS}
        crashed["after_commit"] = c.script(PRODUCER, env={"CHERVIL_CRASH_AT": "after_commit"})
        for point, proc in crashed.items():
            assert proc.wait(timeout=60) == EXIT_CODE, (point, proc.log.read_text())  # type: ignore[attr-defined]
            c.faults.record(f"crash_at:{point}", "process", [proc.pid])
        out = crashed["after_commit"].log.read_text()  # type: ignore[attr-defined]
        assert "RETURNED" not in out, "the producer returned from enqueue despite the crash"
        jobs["after_commit"] = out.split("ID ", 1)[1].split()[0]
        # the job exists although the producer died before returning: it was committed
        assert app_broker.get(jobs["after_commit"]) is not None

        queues = ",".join(f"q_{p}" for p in jobs)
        worker = c.worker("-Q", queues, "-p", "1", "-t", "4", "--no-scheduler")

        def ended() -> dict[str, Job | None] | None:
            now = {p: app_broker.get(i) for p, i in jobs.items()}
            return now if all(j and j.status in TERMINAL for j in now.values()) else None

        got = wait_for(ended, timeout=60, what="every crashed job to end")
        runs, effects, ignored = read_ledger(c.ledger_path)
        for point, job in got.items():
            assert job is not None
            mine = [r for r in runs if r.job == job.id]
            if point == "after_commit":
                assert (job.status, [r.outcome for r in mine]) == (JobStatus.SUCCEEDED, ["ok"])
                continue
            _, _, status, outcomes = WORKER_POINTS[point]
            assert job.status is status, (point, job)
            assert [r.outcome for r in mine] == outcomes, point
            assert job.lost_leases == 1, (point, job.lost_leases)
            assert job.attempts == 2, (point, job.attempts)
            if status is JobStatus.DEAD:
                assert job.dead_reason == "retries_exhausted", point
            # exactly one state: the queue holds this one job, counted once
            stats = {s.queue: s.counts for s in app_broker.queue_stats()}
            assert stats[f"q_{point}"] == {status.value: 1}, (point, stats)
        applied = [e for e in effects if e[2] in jobs.values()]
        assert sorted(e[1] for e in applied) == ["after_commit", "before_finish", "claimed",
                                                 "finish_retry", "task_started"]
        assert [i[1] for i in ignored] == ["before_finish"]  # the rerun, deduplicated
        assert worker.poll() is None
    finally:
        c.close()


def test_scheduler_tick_crash_point(backend: Backend, tmp_path: Path) -> None:
    c = Cluster(tmp_path, backend.url, new_seed(), scheduler_lease_seconds="2")
    try:
        first = c.scheduler("cronprobe:app", env={"CHERVIL_CRASH_AT": "scheduler_tick"})
        assert first.wait(timeout=30) == EXIT_CODE
        broker = c.broker()
        assert broker.list_jobs(JobFilter(queue="default")) == [], "fired before the crash"
        mark = broker.schedule_marks()["tick"]
        second = c.scheduler("cronprobe:app")
        wait_for(lambda: len(broker.list_jobs(JobFilter(queue="default"))) >= 3,
                 timeout=30, what="the restarted scheduler to fire")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        keys = [j.unique_key or "" for j in broker.list_jobs(JobFilter(queue="default"),
                                                             limit=1000)]
        assert len(keys) == len(set(keys)), "a tick was enqueued twice"
        fires = sorted(datetime.fromisoformat(k.split(":", 2)[2]).timestamp() for k in keys)
        # the tick the crash interrupted (the first after the mark) fired exactly once
        assert fires[0] == pytest.approx(int(mark) + 1.0)
        assert all(abs(b - a - 1.0) < 1e-6 for a, b in itertools.pairwise(fires))
    finally:
        c.close()
