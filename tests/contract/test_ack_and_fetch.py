"""Conformance for ``finish_and_reserve`` (ack and fetch), on every backend."""

from __future__ import annotations

from chervil.brokers.base import Broker, Outcome
from chervil.clock import FakeClock
from chervil.job import JobStatus

from .test_broker_contract import LEASE, new, ok, put


def test_finish_and_reserve_keeps_both_halves_semantics(broker: Broker) -> None:
    put(broker, *[new() for _ in range(4)])
    a, b = broker.reserve(["default"], 2, "w", LEASE)
    accepted, jobs = broker.finish_and_reserve(
        [ok(a.id, a.lease_token or "", result="1"), ok(b.id, "stale")],
        ["default"], 5, "w", LEASE)
    assert accepted == [True, False]
    assert len(jobs) == 2 and {j.id for j in jobs}.isdisjoint({a.id, b.id})
    assert all(j.status is JobStatus.RUNNING and j.attempts == 1 for j in jobs)
    done = broker.get(a.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == "1"
    assert broker.finish_and_reserve([], ["default"], 5, "w", LEASE) == ([], [])
    accepted, jobs = broker.finish_and_reserve(
        [ok(b.id, b.lease_token or "")], ["default"], 0, "w", LEASE)
    assert accepted == [True] and jobs == []


def test_a_retry_due_now_can_be_fetched_by_the_same_call(broker: Broker,
                                                         clock: FakeClock) -> None:
    [jid] = put(broker, new(max_attempts=3))
    [job] = broker.reserve(["default"], 1, "w", LEASE)
    retry = Outcome(jid, job.lease_token or "", JobStatus.SCHEDULED, retry_at=clock.now())
    accepted, jobs = broker.finish_and_reserve([retry], ["default"], 1, "w", LEASE)
    assert accepted == [True]
    assert [(j.id, j.attempts) for j in jobs] == [(jid, 2)]
    assert jobs[0].lease_token != job.lease_token
