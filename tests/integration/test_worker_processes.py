"""Real worker processes: crash recovery, graceful drain, hard time limits."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from chervil import JobStatus

from .conftest import Env, children_of, wait_for

pytestmark = pytest.mark.slow


def test_sigkill_of_the_whole_worker_mid_job_recovers(env: Callable[..., Env]) -> None:
    e = env(lease_seconds="2")
    app = e.app()
    job = app.tasks["sleepy"].enqueue("k1", 1.0)
    first = e.worker("-p", "1", "-t", "2")
    wait_for(lambda: any(r[2] == "start" for r in e.ledger()), what="the job to start")
    os.killpg(first.pid, signal.SIGKILL)  # supervisor and child, no goodbye
    first.wait()
    assert job.status() is JobStatus.RUNNING  # held by a dead worker until its lease expires
    e.worker("-p", "1", "-t", "2")
    wait_for(lambda: job.status() is JobStatus.SUCCEEDED, what="recovery and success")
    done = job.refresh()
    assert done.attempts == 2 and done.lost_leases == 1
    events = [r[2] for r in e.ledger()]
    assert events.count("start") == 2 and events.count("end") == 1


def test_killed_child_is_replaced_and_its_job_rerun(env: Callable[..., Env]) -> None:
    e = env()
    app = e.app()
    job = app.tasks["sleepy"].enqueue("k1", 0.5)
    worker = e.worker("-p", "1", "-t", "1")
    wait_for(lambda: any(r[2] == "start" for r in e.ledger()), what="the job to start")
    [child] = children_of(worker.pid)
    os.kill(child, signal.SIGKILL)
    # the supervisor counts the lost lease at once (no waiting for the 30 s lease)
    wait_for(lambda: job.status() is JobStatus.SUCCEEDED, what="rerun on a new child")
    assert job.refresh().lost_leases == 1
    assert worker.poll() is None
    assert children_of(worker.pid) != [child]


def test_sigterm_finishes_running_jobs_and_hands_back_the_rest(
        env: Callable[..., Env]) -> None:
    e = env()
    app = e.app()
    sleepy = app.tasks["sleepy"]
    running = [sleepy.enqueue(f"r{i}", 1.5) for i in range(2)]
    worker = e.worker("-p", "1", "-t", "2")
    wait_for(lambda: sum(r[2] == "start" for r in e.ledger()) == 2, what="two starts")
    waiting = [sleepy.enqueue(f"w{i}", 0.1) for i in range(5)]
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    assert [h.status() for h in running] == [JobStatus.SUCCEEDED] * 2
    for h in waiting:
        j = h.refresh()
        assert j.status is JobStatus.QUEUED and j.attempts == 0
    assert not [r for r in e.ledger() if r[1].startswith("w")]


def test_time_limit_kills_the_child_and_follows_the_retry_policy(
        env: Callable[..., Env]) -> None:
    e = env()
    app = e.app()
    stuck = app.tasks["hang"].enqueue("h")
    worker = e.worker("-p", "1", "-t", "2")
    wait_for(lambda: stuck.status() is JobStatus.DEAD, timeout=40, what="time limit twice")
    j = stuck.refresh()
    assert j.dead_reason == "time_limit" and j.attempts == 2 and j.lost_leases == 0
    assert j.last_error is not None and j.last_error.type == "TimeLimitExceeded"
    assert [r[2] for r in e.ledger()].count("start") == 2
    after = app.tasks["probe"].enqueue("after")  # the replaced child still serves
    wait_for(lambda: after.status() is JobStatus.SUCCEEDED, what="a job on the new child")
    assert worker.poll() is None


def test_burst_drains_and_exits(env: Callable[..., Env]) -> None:
    e = env()
    app = e.app()
    handles = app.enqueue_many([app.tasks["probe"].prepare(f"p{i}") for i in range(50)])
    worker = e.worker("-p", "2", "-t", "4", "--burst")
    assert worker.wait(timeout=30) == 0
    assert all(h.status() is JobStatus.SUCCEEDED for h in handles)
    assert len(e.ledger()) == 50


def test_max_jobs_per_child_replaces_children(env: Callable[..., Env]) -> None:
    e = env()
    app = e.app()
    handles = app.enqueue_many([app.tasks["probe"].prepare(f"p{i}") for i in range(20)])
    worker = e.worker("-p", "1", "-t", "1", "--max-jobs-per-child", "5")
    wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED for h in handles), what="all jobs")
    pids = {r[4] for r in e.ledger()}
    assert len(pids) >= 4
    assert worker.poll() is None


def test_memory_cap_kills_the_child_and_a_poison_job_ends_worker_lost(
        env: Callable[..., Env]) -> None:
    e = env()
    app = e.app()
    hog = app.tasks["hog"].enqueue("hog", 300)
    fine = app.tasks["probe"].enqueue("fine")
    worker = e.worker("-p", "1", "-t", "2", "--max-memory-per-child", "150")
    wait_for(lambda: hog.status() is JobStatus.DEAD, timeout=60, what="three lost leases")
    j = hog.refresh()
    assert (j.dead_reason, j.lost_leases) == ("worker_lost", 3)
    assert [r[1] for r in e.ledger()].count("hog") == 3
    assert fine.status() is JobStatus.SUCCEEDED
    assert worker.poll() is None
    assert "over --max-memory-per-child" in e.log_text()
