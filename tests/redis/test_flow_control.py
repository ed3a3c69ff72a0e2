"""Redis flow control: limits hold under concurrent reserves, fencing keeps slots, and
held-back jobs cost reserve nothing (they are parked, not scanned again).

Command counts come from INFO commandstats on a private redis-server (commands run
inside scripts included), as in test_scale.py: not a timing test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from chervil.brokers import open_broker
from chervil.brokers.base import Broker, NewJob, Outcome
from chervil.clock import FakeClock
from chervil.job import JobStatus, new_job_id
from tests.redis.server import RedisServer
from tests.redis.test_scale import commands

LEASE = 30.0


def job(**kw: object) -> NewJob:
    fields: dict[str, object] = {"id": new_job_id(), "task": "app.t", "queue": "q",
                                 "payload": b'{"a":[],"k":{}}', "max_attempts": 3}
    fields.update(kw)
    return NewJob(**fields)  # type: ignore[arg-type]


def ok(j: object) -> Outcome:
    return Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED)  # type: ignore[attr-defined]


@pytest.fixture
def setup(private_redis: RedisServer) -> Iterator[tuple[Broker, redis.Redis, FakeClock]]:
    clock = FakeClock(1_800_000_000.0)
    broker = open_broker(private_redis.url, clock)
    r = private_redis.client()
    try:
        yield broker, r, clock
    finally:
        broker.close()
        r.close()


def test_eight_threads_never_exceed_the_limit(setup: tuple[Broker, redis.Redis, FakeClock]
                                              ) -> None:
    broker, r, _ = setup
    n, keys = 3, ["concurrency:a", "concurrency:b"]
    broker.enqueue([job(limit_key=keys[i % 2], limit_n=n) for i in range(400)]
                   + [job() for _ in range(100)])
    running = dict.fromkeys(keys, 0)
    peak = dict.fromkeys(keys, 0)
    finished = [0]
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(name: str) -> None:
        start.wait()
        outs: list[Outcome] = []
        idle = 0
        while idle < 50:
            # a job counts from reserve's reply to before its finish is sent: inside
            # the broker's own running interval, so the count is a lower bound
            with lock:
                for o in outs:
                    key = held.pop(o.job_id)
                    if key:
                        running[key] -= 1
            _, jobs = broker.finish_and_reserve(outs, ["q"], 4, name, LEASE)
            with lock:
                finished[0] += len(outs)
                for j in jobs:
                    held[j.id] = j.limit_key
                    if j.limit_key:
                        running[j.limit_key] += 1
                        peak[j.limit_key] = max(peak[j.limit_key], running[j.limit_key])
                        assert running[j.limit_key] <= n
            outs = [ok(j) for j in jobs]
            idle = 0 if jobs else idle + 1

    held: dict[str, str | None] = {}
    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert finished[0] == 500
    assert all(1 <= p <= n for p in peak.values())
    [stats] = broker.queue_stats()
    assert stats.counts == {"succeeded": 500}
    base = "chervil:{q}"
    assert r.hlen(f"{base}:slots") == 0 and r.hlen(f"{base}:lrc") == 0


def test_a_stale_finish_does_not_free_a_slot(setup: tuple[Broker, redis.Redis, FakeClock]
                                             ) -> None:
    broker, r, clock = setup
    broker.enqueue([job(limit_key="lock:k", limit_n=1)])
    [first] = broker.reserve(["q"], 5, "w1", LEASE)
    clock.advance(LEASE + 1)
    assert broker.recover() == 1
    [again] = broker.reserve(["q"], 5, "w2", LEASE)
    assert again.id == first.id and again.lease_token != first.lease_token
    broker.enqueue([job(limit_key="lock:k", limit_n=1)])
    assert broker.finish([ok(first)]) == [False]  # stale token: fenced
    assert r.hget("chervil:{q}:slots", "lock:k") == b"1"
    assert broker.reserve(["q"], 5, "w3", LEASE) == []  # the lock is still held
    assert broker.finish([ok(again)]) == [True]
    [nxt] = broker.reserve(["q"], 5, "w3", LEASE)
    assert nxt.id != first.id and nxt.attempts == 1
    assert broker.finish([ok(nxt)]) == [True]
    assert r.hlen("chervil:{q}:slots") == 0


def _reserve_cost(broker: Broker, r: redis.Redis, want: int) -> dict[str, int]:
    r.config_resetstat()
    got = broker.reserve(["q"], 10, "w", LEASE)
    assert len(got) == want and all(j.task == "app.plain" for j in got)
    cost = commands(r)
    broker.finish([ok(j) for j in got])
    return cost


def test_held_jobs_do_not_grow_reserve_cost(setup: tuple[Broker, redis.Redis, FakeClock]
                                            ) -> None:
    """10,000 held jobs at the head of the queue (higher priority): a lock that is held,
    an empty rate bucket, a paused task. Reserve's commands stay the same as with a few."""
    broker, r, _ = setup
    broker.enqueue([job(limit_key="lock:busy", limit_n=1),
                    job(rate_key="rate:x:", rate_per_second=0.001, rate_burst=1),
                    job(task="app.report")])
    busy = broker.reserve(["q"], 10, "w", LEASE)  # takes the lock and the only token
    assert len(busy) == 3
    broker.set_task_paused("app.report", True)

    def held(n: int) -> list[NewJob]:
        out = []
        for i in range(n):
            kind = i % 3
            if kind == 0:
                out.append(job(priority=9, limit_key="lock:busy", limit_n=1))
            elif kind == 1:
                out.append(job(priority=9, rate_key="rate:x:", rate_per_second=0.001,
                               rate_burst=1))
            else:
                out.append(job(priority=9, task="app.report"))
        return out

    def plain(n: int) -> list[NewJob]:
        return [job(task="app.plain") for _ in range(n)]

    broker.enqueue(held(30) + plain(100))
    warm = _reserve_cost(broker, r, 10)  # parks the first rate-limited job
    small = _reserve_cost(broker, r, 10)
    for _ in range(10):
        broker.enqueue(held(1000))
    large = _reserve_cost(broker, r, 10)
    assert large == small
    assert sum(warm.values()) < 400  # the first call parks, each job once
    [stats] = broker.queue_stats()
    assert stats.ready == 10_030 + 70  # parked jobs are still queued
    # resuming the task brings its jobs back, unspent
    broker.set_task_paused("app.report", False)
    got = broker.reserve(["q"], 10, "w", LEASE)
    assert [j.task for j in got] == ["app.report"] * 10
    assert all(j.attempts == 1 for j in got)
