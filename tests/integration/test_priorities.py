"""Queues in strict order: a flood of batch work does not hold back an urgent job."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chervil import JobStatus

from .conftest import Env, wait_for

pytestmark = pytest.mark.slow


def test_critical_job_overtakes_a_flood_of_batch_jobs(env: Callable[..., Env],
                                                      broker_url: str) -> None:
    e = env(broker_url=broker_url)
    app = e.app()
    app.enqueue_many([app.tasks["bulk"].prepare(f"b{i}", 0.05) for i in range(200)])
    e.worker("-Q", "critical,batch", "-p", "1", "-t", "2")
    wait_for(lambda: sum(r[2] == "start" for r in e.ledger()) >= 10, what="batch under way")
    urgent = app.tasks["urgent"].enqueue("now")
    # counted once the enqueue has committed: a batch job that started between a count
    # taken before and the commit was no fault of the worker's
    started_before = sum(1 for r in e.ledger() if r[2] == "start")
    wait_for(lambda: urgent.status() is JobStatus.SUCCEEDED, what="the urgent job")
    rows = e.ledger()
    at = next(i for i, r in enumerate(rows) if r[1] == "now")
    batch_before = sum(1 for r in rows[:at] if r[2] == "start")
    # After its enqueue, at most one batch job per thread (2) may still show up as started
    # (reserved before the commit, its start written after the count). It waits at most
    # about one batch job's run time.
    assert batch_before <= started_before + 2, "the urgent job waited behind the flood"


def test_weighted_queues_serve_both(env: Callable[..., Env], broker_url: str) -> None:
    e = env(broker_url=broker_url)
    app = e.app()
    app.enqueue_many([app.tasks["bulk"].prepare(f"b{i}", 0.0) for i in range(100)]
                     + [app.tasks["urgent"].prepare(f"u{i}") for i in range(100)])
    e.worker("-Q", "critical:3,batch:1", "-p", "1", "-t", "1")
    wait_for(lambda: sum(r[2] in ("start", "run") for r in e.ledger()) >= 60, what="progress")
    rows = e.ledger()[:60]
    batch = sum(1 for r in rows if r[1].startswith("b"))
    assert 0 < batch < 40  # batch is served, but critical gets most turns
