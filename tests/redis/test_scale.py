"""Hot and inspection paths cost the same with 1,000 or 200,000 waiting jobs.

Not a timing test: it counts the commands Redis executes (INFO commandstats, commands
run inside scripts included) for one round of reserve, extend, finish, recover, stats
and get, with a small and with a large backlog, on a private redis-server so nothing
else is counted. The same commands with the same counts, all of them O(1) or O(log n)
(ZRANGE with a small LIMIT, ZADD, ZREM, ZCARD, HSET, ...), means the round costs
O(log n) whatever the backlog.
"""

from __future__ import annotations

import redis

from chervil.brokers import open_broker
from chervil.brokers.base import Broker, Lease
from chervil.clock import FakeClock
from tests.contract.test_broker_contract import new, ok
from tests.redis.server import RedisServer

LEASE = 30.0


# the harness's own, and a new pooled connection's set-up (not the round's cost)
NOT_COUNTED = {"info", "config|resetstat", "hello", "client|setinfo", "client|setname",
               "select", "auth", "ping"}


def commands(r: redis.Redis) -> dict[str, int]:
    stats = r.info("commandstats")
    return {name: int(v["calls"]) for name, v in
            ((k.removeprefix("cmdstat_"), v) for k, v in stats.items())
            if name not in NOT_COUNTED}


def one_round(broker: Broker, r: redis.Redis) -> dict[str, int]:
    r.config_resetstat()
    jobs = broker.reserve(["q"], 10, "w", LEASE)
    assert len(jobs) == 10
    assert broker.extend([Lease(j.id, j.lease_token or "") for j in jobs], LEASE) == []
    assert broker.finish([ok(j.id, j.lease_token or "") for j in jobs]) == [True] * 10
    assert broker.recover() == 0
    [stats] = broker.queue_stats()
    assert stats.ready > 0 and stats.oldest_ready_age is not None
    assert broker.get(jobs[0].id) is not None
    return commands(r)


def fill(broker: Broker, clock: FakeClock, n: int) -> None:
    batch = [new(queue="q", priority=i % 3, payload=b'{"a":[1],"k":{}}') for i in range(n)]
    batch += [new(queue="q", run_at=clock.now() + 3600 + i) for i in range(n // 100)]
    broker.enqueue(batch)


def test_costs_do_not_grow_with_the_backlog(private_redis: RedisServer) -> None:
    clock = FakeClock(1_800_000_000.0)
    broker = open_broker(private_redis.url, clock)
    r = private_redis.client()
    try:
        fill(broker, clock, 1_000)
        clock.advance(1)
        small = one_round(broker, r)
        fill(broker, clock, 199_000)
        clock.advance(1)
        large = one_round(broker, r)
        [stats] = broker.queue_stats()
        assert stats.ready > 199_000
        differ = {c: (small.get(c), large.get(c)) for c in small.keys() | large.keys()
                  if small.get(c) != large.get(c)}
        assert not differ, f"commands per round (small, large backlog) differ: {differ}"
    finally:
        broker.close()
        r.close()


def test_memory_per_finished_small_job(private_redis: RedisServer) -> None:
    """A finished small job (record + its two index entries) stays under 1.2 KB.

    Measured at ~880 bytes (20,000 jobs) to ~940 (5,000) on Redis 7.0: hash ~490 B in
    a listpack, ~145 B in each of <queue>:fin:succeeded and <queue>:ids:succeeded, the
    rest keyspace and expiry.
    """
    broker = open_broker(private_redis.url)
    r = private_redis.client()
    try:
        broker.queue_stats()
        n = 5_000
        before = int(r.info("memory")["used_memory"])
        broker.enqueue([new(payload=b'{"a":[1],"k":{}}') for _ in range(n)])
        while jobs := broker.reserve(["default"], 500, "host:1", LEASE):
            broker.finish([ok(j.id, j.lease_token or "") for j in jobs])
        [stats] = broker.queue_stats()
        assert stats.counts == {"succeeded": n}
        per_job = (int(r.info("memory")["used_memory"]) - before) / n
        print(f"memory per finished small job: {per_job:.0f} bytes")
        assert per_job < 1200
    finally:
        broker.close()
        r.close()
