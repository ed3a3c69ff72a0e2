"""One conformance suite for every broker (DESIGN §3). A backend is done when it passes."""

from __future__ import annotations

import threading
import time

import pytest

from chervil.brokers.base import Broker, JobFilter, Lease, NewJob, Outcome, WorkerInfo
from chervil.clock import FakeClock
from chervil.job import ErrorInfo, JobStatus, new_job_id

LEASE = 30.0


def new(queue: str = "default", priority: int = 0, run_at: float | None = None,
        unique_key: str | None = None, task: str = "app.task", payload: bytes = b'{"a":[],"k":{}}',
        max_attempts: int = 3, **kw: object) -> NewJob:
    return NewJob(id=new_job_id(), task=task, queue=queue, payload=payload, priority=priority,
                  max_attempts=max_attempts, run_at=run_at, unique_key=unique_key,
                  task_version="v1", **kw)  # type: ignore[arg-type]


def put(broker: Broker, *jobs: NewJob) -> list[str]:
    return [e.id for e in broker.enqueue(list(jobs))]


def ok(job_id: str, token: str, result: str | None = None) -> Outcome:
    return Outcome(job_id, token, JobStatus.SUCCEEDED, result=result)


# -- enqueue ----------------------------------------------------------------------------

def test_enqueue_stores_every_field(broker: Broker, clock: FakeClock) -> None:
    j = new(queue="emails", priority=5, trace={"traceparent": "00-abc"})
    [jid] = put(broker, j)
    job = broker.get(jid)
    assert job is not None
    assert (job.id, job.task, job.queue, job.priority) == (j.id, "app.task", "emails", 5)
    assert job.payload == j.payload
    assert job.status is JobStatus.QUEUED
    assert (job.attempts, job.max_attempts, job.lost_leases) == (0, 3, 0)
    assert job.created_at == clock.now() and job.run_at == clock.now()
    assert job.started_at is None and job.finished_at is None and job.lease_token is None
    assert job.task_version == "v1"
    assert job.trace == {"traceparent": "00-abc"}


def test_enqueue_many_is_idempotent_by_id(broker: Broker) -> None:
    jobs = [new() for _ in range(25)]
    res = broker.enqueue(jobs)
    assert [r.id for r in res] == [j.id for j in jobs] and not any(r.duplicate for r in res)
    again = broker.enqueue(jobs[:3])
    assert [r.id for r in again] == [j.id for j in jobs[:3]]
    assert all(r.duplicate for r in again)
    assert sum(s.ready for s in broker.queue_stats()) == 25


def test_raw_payload_bytes_are_kept_exactly(broker: Broker) -> None:
    raw = b"\xff\xfe not json \x00"
    [jid] = put(broker, new(payload=raw))
    job = broker.get(jid)
    assert job is not None and job.payload == raw


def test_unique_key_returns_the_existing_job(broker: Broker, clock: FakeClock) -> None:
    [first] = put(broker, new(unique_key="welcome:1"))
    res = broker.enqueue([new(unique_key="welcome:1"), new(unique_key="welcome:2")])
    assert res[0].id == first and res[0].duplicate
    assert not res[1].duplicate
    [job] = broker.reserve(["default"], 1, "w", LEASE)
    assert job.id == first
    res = broker.enqueue([new(unique_key="welcome:1")])
    assert res[0].id == first and res[0].duplicate  # still running
    broker.finish([ok(first, job.lease_token or "")])
    res = broker.enqueue([new(unique_key="welcome:1")])
    assert res[0].id != first and not res[0].duplicate


def test_get_unknown_job_is_none(broker: Broker) -> None:
    assert broker.get(new_job_id()) is None


# -- reserve ----------------------------------------------------------------------------

def test_reserve_leases_and_counts_the_attempt(broker: Broker, clock: FakeClock) -> None:
    [jid] = put(broker, new())
    clock.advance(2)
    [job] = broker.reserve(["default"], 10, "worker-1", LEASE)
    assert job.id == jid and job.status is JobStatus.RUNNING
    assert job.attempts == 1 and job.worker == "worker-1"
    assert job.lease_token and job.lease_until == clock.now() + LEASE
    assert job.started_at == clock.now()
    stored = broker.get(jid)
    assert stored is not None and stored.status is JobStatus.RUNNING
    assert stored.lease_token == job.lease_token
    assert broker.reserve(["default"], 10, "worker-2", LEASE) == []


def test_reserve_order_queues_priority_fifo(broker: Broker, clock: FakeClock) -> None:
    low = put(broker, new(queue="batch"))
    a = put(broker, new(priority=0))
    clock.advance(1)
    b = put(broker, new(priority=0))
    c = put(broker, new(priority=9))
    crit = put(broker, new(queue="critical"))
    got = broker.reserve(["critical", "default", "batch"], 3, "w", LEASE)
    assert [j.id for j in got] == crit + c + a
    got = broker.reserve(["critical", "default", "batch"], 10, "w", LEASE)
    assert [j.id for j in got] == b + low


def test_reserve_respects_limit_and_never_hands_a_job_twice(broker: Broker) -> None:
    put(broker, *[new() for _ in range(30)])
    seen: list[str] = []
    for _ in range(4):
        seen += [j.id for j in broker.reserve(["default"], 8, "w", LEASE)]
    assert len(seen) == 30 and len(set(seen)) == 30
    assert broker.reserve(["default"], 0, "w", LEASE) == []


def test_concurrent_reserves_split_the_jobs(broker: Broker) -> None:
    put(broker, *[new() for _ in range(200)])
    seen: list[str] = []
    lock = threading.Lock()

    def grab() -> None:
        while True:
            jobs = broker.reserve(["default"], 7, threading.current_thread().name, LEASE)
            if not jobs:
                return
            with lock:
                seen.extend(j.id for j in jobs)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 200 and len(set(seen)) == 200


def test_delayed_jobs_wait_for_their_time(broker: Broker, clock: FakeClock) -> None:
    [jid] = put(broker, new(run_at=clock.now() + 3600 * 24 * 3))
    job = broker.get(jid)
    assert job is not None and job.status is JobStatus.SCHEDULED
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    clock.advance(3600 * 24 * 3 - 1)
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    clock.advance(1)
    [got] = broker.reserve(["default"], 10, "w", LEASE)
    assert got.id == jid


def test_paused_queue_is_skipped(broker: Broker) -> None:
    put(broker, new(queue="a"))
    [b] = put(broker, new(queue="b"))
    broker.set_paused("a", True)
    assert [j.id for j in broker.reserve(["a", "b"], 10, "w", LEASE)] == [b]
    stats = {s.queue: s for s in broker.queue_stats()}
    assert stats["a"].paused and stats["a"].ready == 1
    broker.set_paused("a", False)
    assert len(broker.reserve(["a", "b"], 10, "w", LEASE)) == 1
    assert not {s.queue: s for s in broker.queue_stats()}["a"].paused


# -- leases -----------------------------------------------------------------------------

def test_extend_pushes_the_lease_and_reports_lost_ones(broker: Broker, clock: FakeClock) -> None:
    put(broker, new(), new())
    a, b = broker.reserve(["default"], 2, "w", LEASE)
    clock.advance(20)
    lost = broker.extend([Lease(a.id, a.lease_token or ""), Lease(b.id, "stale")], LEASE)
    assert lost == [b.id]
    got = broker.get(a.id)
    assert got is not None and got.lease_until == clock.now() + LEASE


def test_expired_lease_is_recovered_and_fenced(broker: Broker, clock: FakeClock) -> None:
    [jid] = put(broker, new())
    [first] = broker.reserve(["default"], 1, "w1", LEASE)
    clock.advance(LEASE - 1)
    assert broker.recover() == 0
    clock.advance(2)
    assert broker.recover() == 1
    job = broker.get(jid)
    assert job is not None and job.status is JobStatus.QUEUED
    assert job.lost_leases == 1 and job.attempts == 1
    [second] = broker.reserve(["default"], 1, "w2", LEASE)
    assert second.attempts == 2 and second.lease_token != first.lease_token
    # the slow first worker comes back: its outcome is rejected
    assert broker.finish([ok(jid, first.lease_token or "")]) == [False]
    assert broker.extend([Lease(jid, first.lease_token or "")], LEASE) == [jid]
    assert broker.finish([ok(jid, second.lease_token or "")]) == [True]
    done = broker.get(jid)
    assert done is not None and done.status is JobStatus.SUCCEEDED


def test_three_lost_leases_make_the_job_dead(broker: Broker, clock: FakeClock) -> None:
    [jid] = put(broker, new(max_attempts=10))
    for _ in range(3):
        assert len(broker.reserve(["default"], 1, "w", LEASE)) == 1
        clock.advance(LEASE + 1)
        assert broker.recover() == 1
    job = broker.get(jid)
    assert job is not None and job.status is JobStatus.DEAD
    assert job.dead_reason == "worker_lost" and job.lost_leases == 3
    assert job.finished_at == clock.now()
    assert job.last_error is not None


def test_recover_given_leases_at_once(broker: Broker) -> None:
    put(broker, new(), new())
    a, b = broker.reserve(["default"], 2, "w", LEASE)
    assert broker.recover([Lease(a.id, a.lease_token or "")]) == 1
    ja, jb = broker.get(a.id), broker.get(b.id)
    assert ja is not None and ja.status is JobStatus.QUEUED and ja.lost_leases == 1
    assert jb is not None and jb.status is JobStatus.RUNNING


def test_release_hands_back_without_an_attempt(broker: Broker, clock: FakeClock) -> None:
    put(broker, new(), new())
    a, b = broker.reserve(["default"], 2, "w", LEASE)
    assert broker.release([Lease(a.id, a.lease_token or "")]) == 1
    assert broker.release([Lease(b.id, b.lease_token or "")], delay=10) == 1
    ja, jb = broker.get(a.id), broker.get(b.id)
    assert ja is not None and ja.status is JobStatus.QUEUED and ja.attempts == 0
    assert jb is not None and jb.status is JobStatus.SCHEDULED and jb.run_at == clock.now() + 10
    assert broker.release([Lease(a.id, a.lease_token or "")]) == 0  # not running any more
    assert [j.id for j in broker.reserve(["default"], 5, "w", LEASE)] == [a.id]


# -- finish -----------------------------------------------------------------------------

def test_finish_succeeded_with_result(broker: Broker, clock: FakeClock) -> None:
    [jid] = put(broker, new())
    [job] = broker.reserve(["default"], 1, "w", LEASE)
    clock.advance(1.5)
    assert broker.finish([ok(jid, job.lease_token or "", result="42")]) == [True]
    got = broker.get(jid)
    assert got is not None and got.status is JobStatus.SUCCEEDED
    assert got.result == "42" and got.finished_at == clock.now() and got.lease_until is None
    assert broker.finish([ok(jid, job.lease_token or "")]) == [False]  # one terminal state


def test_finish_retry_then_dead(broker: Broker, clock: FakeClock) -> None:
    [jid] = put(broker, new(max_attempts=2))
    [job] = broker.reserve(["default"], 1, "w", LEASE)
    err = ErrorInfo("ValueError", "boom", "Traceback ...")
    assert broker.finish([Outcome(jid, job.lease_token or "", JobStatus.SCHEDULED,
                                  retry_at=clock.now() + 5, error=err)]) == [True]
    got = broker.get(jid)
    assert got is not None and got.status is JobStatus.SCHEDULED and got.last_error == err
    assert got.run_at == clock.now() + 5
    assert broker.reserve(["default"], 1, "w", LEASE) == []
    clock.advance(5)
    [job] = broker.reserve(["default"], 1, "w", LEASE)
    assert job.attempts == 2
    assert broker.finish([Outcome(jid, job.lease_token or "", JobStatus.DEAD,
                                  dead_reason="retries_exhausted", error=err)]) == [True]
    got = broker.get(jid)
    assert got is not None and got.status is JobStatus.DEAD
    assert got.dead_reason == "retries_exhausted" and got.last_error == err


def test_finish_batch_reports_each_outcome(broker: Broker) -> None:
    put(broker, *[new() for _ in range(5)])
    jobs = broker.reserve(["default"], 5, "w", LEASE)
    outcomes = [ok(j.id, j.lease_token or "") for j in jobs]
    outcomes[2] = ok(jobs[2].id, "stale")
    assert broker.finish(outcomes) == [True, True, False, True, True]


# -- operating --------------------------------------------------------------------------

def test_requeue_dead_resets_attempts(broker: Broker) -> None:
    ids = put(broker, new(queue="a", task="t1"), new(queue="a", task="t2"), new(queue="b"))
    jobs = broker.reserve(["a", "b"], 3, "w", LEASE)
    broker.finish([Outcome(j.id, j.lease_token or "", JobStatus.DEAD,
                           dead_reason="not_retryable") for j in jobs])
    assert broker.requeue([ids[0]]) == 1
    job = broker.get(ids[0])
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    assert job.dead_reason is None
    assert broker.requeue_dead(queue="a", task="t1") == 0
    assert broker.requeue_dead(queue="a") == 1
    assert broker.requeue_dead() == 1
    assert sum(s.ready for s in broker.queue_stats()) == 3


def test_cancel_and_purge_touch_waiting_jobs_only(broker: Broker, clock: FakeClock) -> None:
    ids = put(broker, new(), new(), new(run_at=clock.now() + 60), new(queue="other"))
    [running] = broker.reserve(["default"], 1, "w", LEASE)
    assert broker.cancel([running.id]) == 0
    waiting = [i for i in ids[:3] if i != running.id]
    assert broker.cancel([waiting[0]]) == 1
    job = broker.get(waiting[0])
    assert job is not None and job.status is JobStatus.CANCELLED
    assert broker.purge("default") == 1
    stats = {s.queue: s for s in broker.queue_stats()}
    assert stats["default"].counts.get("cancelled") == 2
    assert stats["default"].counts.get("running") == 1
    assert stats["other"].ready == 1


def test_queue_stats_counts_and_age(broker: Broker, clock: FakeClock) -> None:
    put(broker, new(queue="q"))
    clock.advance(10)
    put(broker, new(queue="q"), new(queue="q", run_at=clock.now() + 100))
    clock.advance(5)
    [s] = [s for s in broker.queue_stats() if s.queue == "q"]
    assert s.counts == {"queued": 2, "scheduled": 1}
    assert s.oldest_ready_age == pytest.approx(15.0)
    broker.reserve(["q"], 2, "w", LEASE)
    [s] = [s for s in broker.queue_stats() if s.queue == "q"]
    assert s.oldest_ready_age is None and s.counts.get("running") == 2


def test_list_jobs_filters_and_pages(broker: Broker, clock: FakeClock) -> None:
    ids = []
    for i in range(7):
        clock.advance(0.01)
        ids += put(broker, new(queue="a" if i % 2 else "b", task=f"t{i % 3}"))
    page1 = broker.list_jobs(JobFilter(), limit=4)
    page2 = broker.list_jobs(JobFilter(), limit=4, before_id=page1[-1].id)
    assert [j.id for j in page1 + page2] == ids[::-1]
    assert {j.queue for j in broker.list_jobs(JobFilter(queue="a"))} == {"a"}
    assert len(broker.list_jobs(JobFilter(queue="a"))) == 3
    assert {j.task for j in broker.list_jobs(JobFilter(task="t0"))} == {"t0"}
    assert broker.list_jobs(JobFilter(status=JobStatus.DEAD)) == []
    assert len(broker.list_jobs(JobFilter(status=JobStatus.QUEUED, queue="b"))) == 4


def test_prune_removes_old_terminal_records(broker: Broker, clock: FakeClock) -> None:
    ids = put(broker, new(), new(), new())
    jobs = {j.id: j for j in broker.reserve(["default"], 2, "w", LEASE)}
    a, b = sorted(jobs)
    broker.finish([ok(a, jobs[a].lease_token or ""),
                   Outcome(b, jobs[b].lease_token or "", JobStatus.DEAD, dead_reason="x")])
    clock.advance(100)
    assert broker.prune(succeeded_before=clock.now() - 200, dead_before=clock.now()) == 1
    assert broker.get(b) is None and broker.get(a) is not None
    assert broker.prune(succeeded_before=clock.now(), dead_before=clock.now()) == 1
    assert broker.get(a) is None
    waiting = [i for i in ids if i not in jobs]
    assert broker.get(waiting[0]) is not None


# -- workers and coordination -----------------------------------------------------------

def test_worker_heartbeats(broker: Broker, clock: FakeClock) -> None:
    info = WorkerInfo(id="host:1", host="host", pid=1, queues=("a",), tasks={"t": "v1"},
                      started_at=clock.now(), counters={"succeeded": 3})
    broker.register_worker(info)
    [w] = broker.workers()
    assert (w.id, w.queues, w.tasks, w.counters) == ("host:1", ("a",), {"t": "v1"},
                                                     {"succeeded": 3})
    assert w.seen_at == clock.now()
    clock.advance(61)
    assert broker.workers(seen_within=60) == []
    broker.register_worker(info)
    assert len(broker.workers()) == 1
    broker.unregister_worker("host:1")
    assert broker.workers() == []


def test_named_lease(broker: Broker, clock: FakeClock) -> None:
    assert broker.acquire_lease("scheduler", "a", 10)
    assert not broker.acquire_lease("scheduler", "b", 10)
    clock.advance(5)
    assert broker.acquire_lease("scheduler", "a", 10)  # renew
    clock.advance(9)
    assert not broker.acquire_lease("scheduler", "b", 10)
    clock.advance(2)
    assert broker.acquire_lease("scheduler", "b", 10)  # expired: taken over
    broker.release_lease("scheduler", "a")  # not the owner: no effect
    assert not broker.acquire_lease("scheduler", "a", 10)
    broker.release_lease("scheduler", "b")
    assert broker.acquire_lease("scheduler", "a", 10)


def test_wait_wakes_up_on_enqueue(broker: Broker) -> None:
    broker.reserve(["default"], 1, "w", LEASE)  # connect and set up before timing
    timer = threading.Timer(0.2, lambda: broker.enqueue([new()]))
    timer.start()
    start = time.monotonic()
    broker.wait(["default"], timeout=20.0)
    waited = time.monotonic() - start
    timer.join()
    assert waited < 10.0, "wait() slept to its timeout instead of waking on enqueue"
    assert len(broker.reserve(["default"], 1, "w", LEASE)) == 1


def test_wait_and_reserve_takes_what_woke_it(broker: Broker) -> None:
    """The job enqueued during the wait comes back leased from the same call; with none,
    the call returns nothing at its timeout; a paused queue is waited on but not taken."""
    broker.reserve(["default"], 1, "w", LEASE)  # connect and set up before timing
    assert broker.wait_and_reserve(["default"], 0.2, 5, "w", LEASE) == []
    timer = threading.Timer(0.2, lambda: broker.enqueue([new(), new()]))
    timer.start()
    start = time.monotonic()
    got = broker.wait_and_reserve(["default"], 20.0, 5, "w", LEASE)
    timer.join()
    assert time.monotonic() - start < 10.0, "slept to its timeout instead of waking"
    got += broker.reserve(["default"], 5, "w", LEASE)  # a wake-up may come before the 2nd
    assert len(got) == 2 and all(j.status is JobStatus.RUNNING and j.lease_token for j in got)
    broker.set_paused("default", True)
    put(broker, new())
    assert broker.wait_and_reserve(["default"], 0.2, 5, "w", LEASE) == []
