"""Flow control in the broker (issue: unique jobs, locks, limits, pauses, schedule marks).

Every clause runs against every backend through the same ``broker`` fixture.
"""

from __future__ import annotations

import random
import threading
import time

from chervil.brokers.base import Broker, Lease, NewJob, Outcome
from chervil.clock import FakeClock
from chervil.job import Job, JobStatus, new_job_id

LEASE = 30.0


def job(**kw: object) -> NewJob:
    fields: dict[str, object] = {"id": new_job_id(), "task": "app.t", "queue": "default",
                                 "payload": b'{"a":[],"k":{}}', "max_attempts": 3}
    fields.update(kw)
    return NewJob(**fields)  # type: ignore[arg-type]


def done(broker: Broker, j: object) -> None:
    assert broker.finish([Outcome(j.id, j.lease_token, JobStatus.SUCCEEDED)]) == [True]  # type: ignore[attr-defined]


def backlog_then_others(broker: Broker, backlog: list[NewJob]) -> list[NewJob]:
    """Enqueue ``backlog`` (in batches of 500), then 30 plain jobs behind it."""
    for i in range(0, len(backlog), 500):
        broker.enqueue(backlog[i:i + 500])
    others = [job() for _ in range(30)]
    broker.enqueue(others)
    return others


def reserve_others(broker: Broker, others: list[NewJob], calls: int = 60) -> None:
    """Reserve (batches of 10) until ``others`` are all taken, the brokers parking the
    backlog ahead of them as they meet it; nothing else is taken."""
    got: list = []
    for _ in range(calls):
        got += broker.reserve(["default"], 10, "w", LEASE)
        if len(got) >= len(others):
            break
    assert sorted(j.id for j in got) == sorted(j.id for j in others)


def first_then_others(broker: Broker, backlog: list[NewJob]) -> Job:
    """Enqueue ``backlog`` and the others behind it, take the backlog's first job (the
    one its key or bucket lets run), then reach the others; the rest of the backlog
    waits, none of it taken. Returns the first job."""
    others = backlog_then_others(broker, backlog)
    [first] = broker.reserve(["default"], 1, "w", LEASE)
    assert first.id == backlog[0].id
    reserve_others(broker, others)
    stats = {s.queue: s.counts for s in broker.queue_stats()}["default"]
    assert stats["queued"] == len(backlog) - 1
    return first


def test_unique_while_queued_lets_a_running_job_be_followed(broker: Broker) -> None:
    [a] = broker.enqueue([job(unique_key="sync:1", unique_mode="queued")])
    assert broker.enqueue([job(unique_key="sync:1", unique_mode="queued")])[0].duplicate
    broker.reserve(["default"], 1, "w", LEASE)
    b = broker.enqueue([job(unique_key="sync:1", unique_mode="queued")])[0]
    assert not b.duplicate and b.id != a.id


def test_unique_window_outlives_the_job(broker: Broker, clock: FakeClock) -> None:
    until = clock.now() + 3600
    [a] = broker.enqueue([job(unique_key="mail:1", unique_mode="window", unique_until=until)])
    [r] = broker.reserve(["default"], 1, "w", LEASE)
    done(broker, r)
    again = broker.enqueue([job(unique_key="mail:1", unique_mode="window",
                                unique_until=until)])[0]
    assert again.duplicate and again.id == a.id
    clock.advance(3601)
    later = broker.enqueue([job(unique_key="mail:1", unique_mode="window",
                                unique_until=clock.now() + 3600)])[0]
    assert not later.duplicate


def test_sixteen_producers_racing_on_a_thousand_keys(broker: Broker) -> None:
    keys = [f"welcome:{i}" for i in range(1000)]
    winners: dict[str, set[str]] = {k: set() for k in keys}
    lock = threading.Lock()

    def produce(seed: int) -> None:
        order = keys[:]
        random.Random(seed).shuffle(order)
        for start in range(0, 1000, 100):
            batch = [job(unique_key=k) for k in order[start:start + 100]]
            for nj, res in zip(batch, broker.enqueue(batch), strict=True):
                with lock:
                    winners[nj.unique_key or ""].add(res.id)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(ids) == 1 for ids in winners.values())
    stats = {s.queue: s for s in broker.queue_stats()}
    assert stats["default"].ready == 1000


def test_lock_runs_one_job_per_key(broker: Broker) -> None:
    broker.enqueue([job(limit_key="lock:acct:1", limit_n=1) for _ in range(3)]
                   + [job(limit_key="lock:acct:2", limit_n=1)])
    first = broker.reserve(["default"], 10, "w", LEASE)
    assert sorted(j.limit_key or "" for j in first) == ["lock:acct:1", "lock:acct:2"]
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    held = next(j for j in first if j.limit_key == "lock:acct:1")
    done(broker, held)
    [nxt] = broker.reserve(["default"], 10, "w", LEASE)
    assert nxt.limit_key == "lock:acct:1" and nxt.attempts == 1


def test_waiting_for_a_lock_spends_no_attempt(broker: Broker) -> None:
    broker.enqueue([job(limit_key="lock:k", limit_n=1) for _ in range(2)])
    [a] = broker.reserve(["default"], 5, "w", LEASE)
    for _ in range(3):
        assert broker.reserve(["default"], 5, "w", LEASE) == []
    done(broker, a)
    [b] = broker.reserve(["default"], 5, "w", LEASE)
    assert b.attempts == 1


def test_lock_of_a_dead_worker_frees_on_recovery(broker: Broker, clock: FakeClock) -> None:
    broker.enqueue([job(limit_key="lock:k", limit_n=1) for _ in range(2)])
    assert len(broker.reserve(["default"], 5, "w1", LEASE)) == 1
    clock.advance(LEASE + 1)
    assert broker.recover() == 1
    got = broker.reserve(["default"], 5, "w2", LEASE)
    assert len(got) == 1  # one of the two, the lock is free again and held once
    assert broker.reserve(["default"], 5, "w2", LEASE) == []
    broker.release([Lease(got[0].id, got[0].lease_token or "")])
    assert len(broker.reserve(["default"], 5, "w2", LEASE)) == 1


def test_concurrency_limit(broker: Broker) -> None:
    broker.enqueue([job(limit_key="concurrency:t:", limit_n=2) for _ in range(5)])
    running = broker.reserve(["default"], 10, "w", LEASE)
    assert len(running) == 2
    broker.finish([Outcome(running[0].id, running[0].lease_token or "", JobStatus.DEAD,
                           dead_reason="not_retryable")])
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 1
    assert broker.reserve(["default"], 10, "w", LEASE) == []


def test_held_back_jobs_do_not_block_the_queue(broker: Broker) -> None:
    broker.enqueue([job(limit_key="lock:busy", limit_n=1, priority=5) for _ in range(50)])
    [free] = broker.enqueue([job()])
    first = broker.reserve(["default"], 10, "w", LEASE)
    assert free.id in {j.id for j in first} and len(first) == 2
    broker.enqueue([job()])
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 1


def test_a_backlog_behind_a_lock_holds_back_nothing_else(broker: Broker) -> None:
    """Thousands of jobs behind one held lock, ahead of the others in the queue: a few
    reserves reach the others (the brokers park the lock's jobs as they meet them: up to
    1,000 per reserve on PostgreSQL), and the lock's jobs then run one at a time, in
    order."""
    backlog = [job(limit_key="lock:hot", limit_n=1, priority=1) for _ in range(3000)]
    first = first_then_others(broker, backlog)
    for want in backlog[1:4]:  # each freed slot lets the next one in, and only it
        done(broker, first)
        [first] = broker.reserve(["default"], 10, "w", LEASE)
        assert first.id == want.id and first.attempts == 1
        assert broker.reserve(["default"], 10, "w", LEASE) == []
    # handed back unstarted, it frees the lock for one job of the key
    assert broker.release([Lease(first.id, first.lease_token or "")]) == 1
    [again] = broker.reserve(["default"], 10, "w", LEASE)
    assert again.limit_key == "lock:hot"
    assert broker.reserve(["default"], 10, "w", LEASE) == []


def test_rate_limit_token_bucket(broker: Broker, clock: FakeClock) -> None:
    broker.enqueue([job(rate_key="rate:t:cust1", rate_per_second=0.5, rate_burst=2)
                    for _ in range(6)] + [job(rate_key="rate:t:cust2", rate_per_second=0.5,
                                              rate_burst=2)])
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 3  # 2 + 1 of cust2
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    clock.advance(1)
    assert broker.reserve(["default"], 10, "w", LEASE) == []  # half a token
    clock.advance(1)
    got = broker.reserve(["default"], 10, "w", LEASE)
    assert len(got) == 1 and got[0].rate_key == "rate:t:cust1" and got[0].attempts == 1
    clock.advance(100)
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 2  # capped at the burst


def test_paused_task_is_held_not_failed(broker: Broker) -> None:
    broker.enqueue([job(task="app.report"), job(task="app.mail")])
    broker.set_task_paused("app.report", True)
    assert broker.paused_tasks() == ["app.report"]
    assert [j.task for j in broker.reserve(["default"], 10, "w", LEASE)] == ["app.mail"]
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    broker.set_task_paused("app.report", False)
    assert broker.paused_tasks() == []
    [r] = broker.reserve(["default"], 10, "w", LEASE)
    assert r.task == "app.report" and r.attempts == 1


def test_a_backlog_of_a_paused_task_holds_back_nothing_else(broker: Broker) -> None:
    """Thousands of jobs of a paused task ahead of the others: a few reserves reach the
    others; resumed, the task's jobs all come back, in order, none spent an attempt."""
    backlog = [job(task="app.report", priority=1) for _ in range(3000)]
    others = backlog_then_others(broker, backlog)
    broker.set_task_paused("app.report", True)
    reserve_others(broker, others)  # Redis parks a reserve's candidate window per call
    stats = {s.queue: s.counts for s in broker.queue_stats()}["default"]
    assert stats["queued"] == len(backlog)
    broker.set_task_paused("app.report", False)
    taken = broker.reserve(["default"], 100, "w", LEASE)
    assert [j.id for j in taken] == [j.id for j in backlog[:100]]
    assert all(j.attempts == 1 for j in taken)


def test_a_rate_limited_backlog_holds_back_nothing_else(broker: Broker,
                                                       clock: FakeClock) -> None:
    """Thousands of jobs of an empty token bucket ahead of the others: a few reserves
    reach the others (the brokers park the bucket's jobs until their token is due), and
    the bucket's jobs then come back one per token, in order, none spent an attempt."""
    backlog = [job(rate_key="rate:slow", rate_per_second=1.0, rate_burst=1.0, priority=1)
               for _ in range(3000)]
    first_then_others(broker, backlog)
    for want in backlog[1:4]:  # one token a second, one job per token
        clock.advance(1.0)
        [taken] = broker.reserve(["default"], 10, "w", LEASE)
        assert taken.id == want.id and taken.attempts == 1
        assert broker.reserve(["default"], 10, "w", LEASE) == []
    clock.advance(3.0)
    assert [j.id for j in broker.reserve(["default"], 10, "w", LEASE)] == [backlog[4].id]


def test_an_idle_worker_wakes_when_a_token_is_due(broker: Broker) -> None:
    """A job held back by its bucket wakes a waiting worker when its token is due, not
    at the end of the wait's timeout."""
    broker.enqueue([job(rate_key="rate:w", rate_per_second=4.0, rate_burst=1.0)
                    for _ in range(2)])
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 1
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    started = time.monotonic()
    broker.wait(["default"], timeout=20.0)
    assert time.monotonic() - started < 10.0, "wait() slept past the token's due time"


def test_schedule_marks_never_move_back(broker: Broker) -> None:
    assert broker.schedule_marks() == {}
    broker.mark_schedule("nightly", 100.0)
    broker.mark_schedule("nightly", 50.0)
    broker.mark_schedule("hourly", 7.0)
    assert broker.schedule_marks() == {"nightly": 100.0, "hourly": 7.0}


def bookkeeping(broker: Broker) -> dict[str, int]:
    """The broker's flow-control rows (or Redis hash fields): unique keys held, limit
    slots, token buckets. Read from the storage itself: no verb of the contract shows
    them."""
    from chervil.brokers.postgres import PostgresBroker
    from chervil.brokers.redis import RedisBroker
    from chervil.brokers.sqlite import SQLiteBroker

    if isinstance(broker, SQLiteBroker):
        [(u, b)] = broker.db.read("SELECT (SELECT count(*) FROM chervil_unique), "
                                  "(SELECT count(*) FROM chervil_buckets)")
        return {"unique": u, "slots": 0, "buckets": b}
    if isinstance(broker, PostgresBroker):
        from psycopg import sql

        with broker._conn() as conn:
            row = conn.execute(sql.SQL(
                "SELECT (SELECT count(*) FROM {s}.unique_keys), (SELECT count(*) FROM "
                "{s}.slots), (SELECT count(*) FROM {s}.buckets)").format(s=broker._schema)
            ).fetchone()
        assert row is not None
        return {"unique": row[0], "slots": row[1], "buckets": row[2]}
    assert isinstance(broker, RedisBroker)
    base = broker._base("default")
    r = broker._r
    assert r.hlen(f"{base}:uniqw") == r.zcard(f"{base}:uniqx")
    assert r.hlen(f"{base}:tb") == r.zcard(f"{base}:tbfull")
    return {"unique": r.hlen(f"{base}:uniq"), "slots": r.hlen(f"{base}:slots"),
            "buckets": r.hlen(f"{base}:tb")}


def test_prune_forgets_the_keys_no_job_needs(broker: Broker, clock: FakeClock) -> None:
    """Unique keys, limit slots and token buckets do not pile up: once no job holds a
    key (its job finished, its window passed) and a bucket is full again, prune forgets
    them, in batches; what a key still does, it keeps doing."""
    now = clock.now()

    def window(key: str) -> NewJob:
        return job(unique_key=key, unique_mode="window", unique_until=now + 60)

    broker.enqueue([window(f"u:win{i}") for i in range(5)] + [
        job(unique_key="u:active"), job(limit_key="lock:p", limit_n=1),
        job(rate_key="rate:p", rate_per_second=1.0, rate_burst=2.0)])
    got = broker.reserve(["default"], 10, "w", LEASE)
    assert len(got) == 8
    for j in got:
        done(broker, j)
    assert broker.prune(0.0, 0.0, batch=2) == 0  # no record old enough: all kept
    # the windows still hold, and the bucket (one token used) is not full yet
    assert bookkeeping(broker) == {"unique": 5, "slots": 0, "buckets": 1}
    assert broker.enqueue([window("u:win0")])[0].duplicate
    clock.advance(61)
    assert broker.prune(0.0, 0.0, batch=2) == 0
    assert bookkeeping(broker) == {"unique": 0, "slots": 0, "buckets": 0}
    assert not broker.enqueue([window("u:win0")])[0].duplicate
    # a forgotten bucket is a full one: its burst, then nothing
    broker.enqueue([job(rate_key="rate:p", rate_per_second=1.0, rate_burst=2.0)
                    for _ in range(3)])
    assert sum(j.rate_key == "rate:p" for j in broker.reserve(["default"], 10, "w", LEASE)) == 2


def test_queue_age_counts_every_waiting_job_whatever_its_priority_or_hold(
        broker: Broker, clock: FakeClock) -> None:
    """The age of a queue is that of its oldest queued job: one of another priority, or
    one held back by its lock, counts as much as a plain one."""
    def age() -> float | None:
        [s] = [s for s in broker.queue_stats() if s.queue == "default"]
        return s.oldest_ready_age

    urgent = job(priority=5)
    broker.enqueue([urgent])
    clock.advance(5)
    first, second = job(limit_key="lock:k", limit_n=1), job(limit_key="lock:k", limit_n=1)
    broker.enqueue([first, second])
    clock.advance(5)
    plain = job()
    broker.enqueue([plain])
    clock.advance(10)
    assert age() == 20.0
    [got] = broker.reserve(["default"], 1, "w", LEASE)
    assert got.id == urgent.id and age() == 15.0
    [got] = broker.reserve(["default"], 1, "w", LEASE)
    assert got.id == first.id
    [after] = broker.reserve(["default"], 5, "w", LEASE)  # second waits for the lock
    assert after.id == plain.id
    assert age() == 15.0  # the held one is the oldest now
    done(broker, got)
    [last] = broker.reserve(["default"], 5, "w", LEASE)
    assert last.id == second.id and age() is None


def test_a_batch_of_finishes_frees_as_many_slots_as_it_ends(broker: Broker) -> None:
    """Finishing several running jobs of a limit key at once lets as many waiting ones
    run, in their order, and no more."""
    waiting = [job(limit_key="concurrency:t:", limit_n=3) for _ in range(10)]
    broker.enqueue(waiting)
    first = broker.reserve(["default"], 10, "w", LEASE)
    assert [j.id for j in first] == [j.id for j in waiting[:3]]
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    assert broker.finish([Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED)
                          for j in first]) == [True] * 3
    second = broker.reserve(["default"], 10, "w", LEASE)
    assert [j.id for j in second] == [j.id for j in waiting[3:6]]
    assert broker.finish([Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED)
                          for j in second[:2]]) == [True] * 2
    third = broker.reserve(["default"], 10, "w", LEASE)
    assert [j.id for j in third] == [j.id for j in waiting[6:8]]
