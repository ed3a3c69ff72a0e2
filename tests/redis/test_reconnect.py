"""Redis goes away and comes back: the broker works again by itself.

Runs its own redis-server (appendonly yes, appendfsync always) on a free loopback port,
SIGKILLs it and starts it again on the same port and files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chervil.brokers import open_broker
from chervil.brokers.base import Broker
from chervil.errors import BrokerUnavailable
from tests.contract.test_broker_contract import new, ok
from tests.redis.server import RedisServer

LEASE = 30.0


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def restart_later(server: RedisServer, after: float) -> threading.Thread:
    def go() -> None:
        time.sleep(after)
        server.start()

    t = threading.Thread(target=go)
    t.start()
    return t


def test_enqueue_rides_out_a_restart_and_jobs_survive(durable_redis: RedisServer) -> None:
    broker = open_broker(durable_redis.url + "?enqueue_timeout=10&timeout=10")
    try:
        first = [e.id for e in broker.enqueue([new() for _ in range(5)])]
        held = broker.reserve(["default"], 2, "w", LEASE)
        durable_redis.kill()
        t = restart_later(durable_redis, 1.0)
        [late] = broker.enqueue([new()])  # blocks until Redis is back, then commits
        t.join()
        assert not late.duplicate
        [s] = broker.queue_stats()
        assert s.counts == {"queued": 4, "running": 2}
        # the scripts are gone with the old process: reloaded on NOSCRIPT
        assert broker.finish([ok(held[0].id, held[0].lease_token or "")]) == [True]
        got = broker.reserve(["default"], 10, "w", LEASE)
        assert {j.id for j in got} == (set(first) - {j.id for j in held}) | {late.id}
    finally:
        broker.close()


def test_outage_longer_than_the_timeout_raises_broker_unavailable(
        durable_redis: RedisServer) -> None:
    broker: Broker = open_broker(durable_redis.url + "?enqueue_timeout=1&timeout=1")
    try:
        [jid] = [e.id for e in broker.enqueue([new()])]
        durable_redis.kill()
        with pytest.raises(BrokerUnavailable, match="did not answer"):
            broker.enqueue([new()])
        with pytest.raises(BrokerUnavailable):
            broker.reserve(["default"], 1, "w", LEASE)
        with pytest.raises(BrokerUnavailable):
            broker.queue_stats()
        with pytest.raises(BrokerUnavailable):
            broker.wait(["default"], 0.5)
        durable_redis.start()
        [job] = broker.reserve(["default"], 1, "w", LEASE)  # nothing to do: it reconnects
        assert job.id == jid
    finally:
        broker.close()


def test_a_blocked_wait_survives_a_restart(durable_redis: RedisServer) -> None:
    broker = open_broker(durable_redis.url + "?timeout=10")
    producer = open_broker(durable_redis.url)
    woke = threading.Event()

    def waiter() -> None:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            try:
                broker.wait(["default"], 20.0)
            except BrokerUnavailable:
                continue
            if broker.reserve(["default"], 1, "w", LEASE):
                woke.set()
                return

    try:
        broker.queue_stats()
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.3)
        durable_redis.kill()
        time.sleep(0.5)
        durable_redis.start()
        time.sleep(0.5)
        producer.enqueue([new()])
        t.join()
        assert woke.is_set(), "the waiter never got the job enqueued after the restart"
    finally:
        broker.close()
        producer.close()
