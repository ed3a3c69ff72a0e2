"""Redis-specific behaviour: URL options, safety checks, Redis's own clock, wake-ups."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest
import redis

from chervil.brokers import open_broker
from chervil.brokers.base import Lease
from chervil.brokers.redis import RedisBroker
from chervil.brokers.redis_conn import parse_url
from chervil.clock import SystemClock
from chervil.errors import ConfigurationError
from chervil.job import JobStatus
from tests.contract.test_broker_contract import new, ok
from tests.redis.server import RedisServer

LEASE = 30.0


def test_url_forms_and_options() -> None:
    o = parse_url("redis://user:p%40ss@127.0.0.1:6380/3?prefix=app1&enqueue_timeout=2.5")
    assert (o.host, o.port, o.db, o.username, o.password) == ("127.0.0.1", 6380, 3, "user",
                                                               "p@ss")
    assert (o.prefix, o.enqueue_timeout, o.tls, o.cluster) == ("app1", 2.5, False, False)
    assert parse_url("rediss://:pw@cache.example.com:6380/0").tls
    u = parse_url("unix:///run/redis.sock?db=2")
    assert (u.unix_path, u.db) == ("/run/redis.sock", 2)
    assert parse_url("redis://127.0.0.1:7000?cluster=true").cluster
    assert parse_url("redis://[::1]:6379/0").host == "::1"


@pytest.mark.parametrize(("url", "words"), [
    ("redis://127.0.0.1/0?prefx=a", "prefx"),
    ("redis://127.0.0.1/0?prefix=a{b}", "prefix"),
    ("redis://127.0.0.1/2?cluster=true", "database 0"),
    ("redis://127.0.0.1/0?cluster=maybe", "true or false"),
    ("redis://10.1.2.3:6379/0", "allow_no_password"),
    ("redis://redis.example.com:6379/0", "password"),
])
def test_bad_urls_are_refused(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        parse_url(url)


def test_remote_redis_with_password_or_explicit_opt_out() -> None:
    assert parse_url("redis://:secret@10.1.2.3:6379/0").password == "secret"
    assert parse_url("redis://10.1.2.3:6379/0?allow_no_password=true").allow_no_password


def test_eviction_policy_is_refused(private_redis: RedisServer) -> None:
    private_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    broker = open_broker(private_redis.url)
    try:
        with pytest.raises(ConfigurationError, match=r"maxmemory-policy.*allow_eviction=true"):
            broker.enqueue([new()])
    finally:
        broker.close()
    broker = open_broker(private_redis.url + "?allow_eviction=true")
    try:
        assert len(broker.enqueue([new()])) == 1
    finally:
        broker.close()


def test_persistence_off_is_a_logged_warning(private_redis: RedisServer,
                                             caplog: pytest.LogCaptureFixture) -> None:
    broker = open_broker(private_redis.url)
    try:
        with caplog.at_level(logging.WARNING, logger="chervil.brokers.redis"):
            broker.queue_stats()
        assert any("appendonly" in r.getMessage() for r in caplog.records)
    finally:
        broker.close()


def test_enqueue_refuses_a_foreign_transaction(private_redis: RedisServer) -> None:
    broker = open_broker(private_redis.url)
    try:
        with pytest.raises(ConfigurationError, match="transaction"):
            broker.enqueue([new()], connection=object())
    finally:
        broker.close()


def test_redis_time_drives_leases_and_schedules(private_redis: RedisServer) -> None:
    broker = open_broker(private_redis.url)
    assert isinstance(broker, RedisBroker) and isinstance(broker.clock, SystemClock)
    try:
        secs, micros = private_redis.client().time()
        server_now = secs + micros / 1e6
        [jid] = [e.id for e in broker.enqueue([new(priority=2)])]
        [job] = broker.reserve(["default"], 5, "w", LEASE)
        assert job.id == jid and job.started_at is not None and job.lease_until is not None
        assert abs(job.started_at - server_now) < 5
        assert job.lease_until == pytest.approx(job.started_at + LEASE, abs=1e-3)
        assert broker.extend([Lease(job.id, job.lease_token or "")], LEASE) == []
        assert broker.finish([ok(jid, job.lease_token or "")]) == [True]
        # a job due in 0.3 s: wait() sleeps until then, not to its 20 s timeout
        [later] = [e.id for e in broker.enqueue([new(run_at=time.time() + 0.3)])]
        deadline = time.monotonic() + 15
        got: list[str] = []
        while not got and time.monotonic() < deadline:
            broker.wait(["default"], timeout=20.0)
            got = [j.id for j in broker.reserve(["default"], 5, "w", LEASE)]
        assert got == [later]
        assert broker.acquire_lease("scheduler", "a", 10)
        assert not broker.acquire_lease("scheduler", "b", 10)
        [stats] = broker.queue_stats()
        assert stats.counts == {"running": 1, "succeeded": 1}
    finally:
        broker.close()


def test_one_enqueue_wakes_every_waiter_it_has_jobs_for(private_redis: RedisServer) -> None:
    """Four waiters, eight jobs in one enqueue, two per reserve: nobody is left asleep."""
    broker = open_broker(private_redis.url)
    got: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(5)

    def worker() -> None:
        start.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                if len(got) >= 8:
                    return
            broker.wait(["default"], timeout=20.0)
            jobs = broker.reserve(["default"], 2, threading.current_thread().name, LEASE)
            with lock:
                got.extend(j.id for j in jobs)

    try:
        broker.queue_stats()  # connect first
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        start.wait()
        time.sleep(0.2)  # let them block
        began = time.monotonic()
        ids = [e.id for e in broker.enqueue([new() for _ in range(8)])]
        for t in threads:
            t.join()
        assert sorted(got) == sorted(ids)
        assert time.monotonic() - began < 15, "a waiter slept to its timeout"
        job = broker.get(ids[0])
        assert job is not None and job.status is JobStatus.RUNNING
    finally:
        broker.close()


def test_single_calls_from_many_threads_all_land(private_redis: RedisServer) -> None:
    """One thread at a time uses the broker's held connection; the others take one
    from the pool: 8 threads racing lose nothing and mix no replies."""
    broker = open_broker(private_redis.url)
    got: list[list[str]] = [[] for _ in range(8)]
    sent: list[list[str]] = [[] for _ in range(8)]

    def produce(k: int) -> None:
        for _ in range(100):
            job = new()
            sent[k].append(job.id)
            got[k].append(broker.enqueue([job])[0].id)

    try:
        threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == sent  # each call read its own reply
        [s] = broker.queue_stats()
        assert s.counts == {"queued": 800}
    finally:
        broker.close()


def test_a_dropped_connection_is_replaced_by_the_next_call(private_redis: RedisServer) -> None:
    broker = open_broker(private_redis.url + "?timeout=5&enqueue_timeout=5")
    admin = private_redis.client()
    try:
        broker.enqueue([new()])
        killed = admin.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1  # the held connection among them
        [e] = broker.enqueue([new()])  # the failed send retries on a new connection
        assert not e.duplicate
        [s] = broker.queue_stats()
        assert s.counts == {"queued": 2}
    finally:
        broker.close()


def test_a_pipeline_on_the_held_connection_survives_error_replies_and_a_flush(
        private_redis: RedisServer) -> None:
    """The worker's finish and reserve travel together on the held connection: an error
    reply to one call is raised after every reply is read (the next call reads its own
    replies), and scripts Redis forgot are loaded and only the refused calls rerun."""
    broker = open_broker(private_redis.url)
    assert isinstance(broker, RedisBroker)
    try:
        broker.enqueue([new(), new()])
        bad = ("enqueue_plain", [], [])  # no keys: the script fails in Redis
        [good] = broker._calls("stats", ["default"], [])[1]
        with pytest.raises(redis.ResponseError):
            broker._scripts.run(broker._r, [good, bad, good])
        stats = broker._scripts.run(broker._r, [good, good])  # each reads its own reply
        assert stats[0][0][:7] == stats[1][0][:7] == [0, 0, 2, 0, 0, 0, 0]
        private_redis.client().script_flush()
        [job] = broker.reserve(["default"], 1, "w", LEASE)
        ok_, jobs = broker.finish_and_reserve([ok(job.id, job.lease_token or "")], ["default"],
                                              5, "w", LEASE)
        assert ok_ == [True] and len(jobs) == 1
        assert {s.queue: s.counts for s in broker.queue_stats()} == {
            "default": {"succeeded": 1, "running": 1}}
    finally:
        broker.close()


def test_a_forked_child_enqueues_on_its_own_connection(private_redis: RedisServer) -> None:
    """A child forked after the parent's first call must not write on the parent's
    socket (their replies would interleave)."""
    import multiprocessing

    broker = open_broker(private_redis.url)
    try:
        broker.enqueue([new()])

        def child() -> None:
            for _ in range(200):
                job = new()
                assert broker.enqueue([job])[0].id == job.id  # its own reply

        procs = [multiprocessing.get_context("fork").Process(target=child) for _ in range(2)]
        for p in procs:
            p.start()
        for _ in range(200):  # the parent keeps going while the children write
            job = new()
            assert broker.enqueue([job])[0].id == job.id
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        [s] = broker.queue_stats()
        assert s.counts == {"queued": 601}
    finally:
        broker.close()


def test_age_entries_of_an_older_layout_are_dropped(private_redis: RedisServer) -> None:
    """The earlier layout put every queued job in <base>:age and took it out at reserve;
    priority-0 jobs are no longer there. An entry an older producer wrote for a job
    since taken must not age the queue: stats drops it when it reaches the head."""
    broker = open_broker(private_redis.url)
    r = private_redis.client()
    try:
        [e] = broker.enqueue([new()])
        base = "chervil:{default}"
        run_at = float(r.hget(f"{base}:j:{e.id}", "run_at") or 0)
        r.zadd(f"{base}:age", {e.id: run_at})  # as an older producer did
        [job] = broker.reserve(["default"], 1, "w", LEASE)
        assert r.zcard(f"{base}:age") == 1  # left behind, as by an older version
        [s] = broker.queue_stats()
        assert s.oldest_ready_age is None and s.counts == {"running": 1}
        assert r.zcard(f"{base}:age") == 0
        assert broker.finish([ok(job.id, job.lease_token or "")]) == [True]
        done = broker.get(job.id)
        assert done is not None and done.lease_until is None and done.finished_at
    finally:
        broker.close()


@pytest.mark.parametrize("extra", [{}, {"priority": 3, "trace": {"traceparent": "00-ab-cd-01"}}])
def test_a_single_plain_job_gets_the_record_and_indexes_of_a_batch(
        private_redis: RedisServer, extra: dict[str, object]) -> None:
    """A single job with no flow key takes enqueue_plain.lua, a batch enqueue.lua: the
    same record, the same index entries, the same wake-up."""
    from chervil.clock import FakeClock

    broker = open_broker(private_redis.url, FakeClock(1_800_000_000.0))
    r = private_redis.client()
    base = "chervil:{default}"

    def entries(job_id: str) -> dict[str, list[tuple[str, float]]]:
        return {index: [(m.decode().replace(job_id, "ID"), score)
                        for m, score in r.zrange(f"{base}:{index}", 0, -1, withscores=True)
                        if job_id in m.decode()]
                for index in ("ids:queued", "ready", "age", "sched")}

    try:
        [one] = broker.enqueue([new(**extra)])
        assert r.llen("chervil:{_}:wake:default") == 1
        two = broker.enqueue([new(**extra), new(queue="other")])[0]
        assert r.llen("chervil:{_}:wake:default") == 2
        again = dataclasses.replace(new(**extra), id=one.id)  # a retry after a lost reply
        assert not one.duplicate and broker.enqueue([again])[0].duplicate
        assert r.hgetall(f"{base}:j:{one.id}") == r.hgetall(f"{base}:j:{two.id}")
        assert entries(one.id) == entries(two.id)
        assert entries(one.id)["ready"] and bool(entries(one.id)["age"]) == bool(extra)
    finally:
        broker.close()
