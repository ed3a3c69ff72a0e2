"""T-27: a Hypothesis state machine over the broker contract, on every broker.

Rules: enqueue (now or delayed), reserve, extend, finish (ok / retry / dead), kill (a
worker's leases dropped on the floor), advance the FakeClock, recover, requeue, cancel,
purge, and finishes and extends with stale tokens. After every step the broker must agree
with a small model (DESIGN §2): every enqueued job exists with exactly one status, the
model's; terminal states change only by requeue; attempts only grow except on requeue;
a stale token is always rejected; after recover no job runs on an expired lease; the
counts of ``queue_stats`` equal the model's.
"""

from __future__ import annotations

import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from chervil.brokers import open_broker
from chervil.brokers.base import Lease, NewJob, Outcome
from chervil.clock import FakeClock
from chervil.job import ErrorInfo, JobStatus, new_job_id

from .harness import broker_url, destroy, require

pytestmark = pytest.mark.slow

LEASE = 30.0
Q = "q"
PAYLOAD = b'{"a": [], "k": {}}'
WAITING = {"queued", "scheduled"}
TERMINAL = {"succeeded", "dead", "cancelled"}


@dataclass
class M:
    status: str
    attempts: int = 0
    lost: int = 0
    token: str | None = None
    lease_until: float = 0.0
    run_at: float = 0.0


def machine(kind: str) -> type[RuleBasedStateMachine]:
    class BrokerModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clock = FakeClock(1_800_000_000.0)
            self.name = "m" + uuid.uuid4().hex[:10]
            self.dir = tempfile.TemporaryDirectory()
            from pathlib import Path

            self.broker = open_broker(broker_url(kind, Path(self.dir.name), self.name),
                                      self.clock)
            self.model: dict[str, M] = {}
            self.held: list[Lease] = []  # leases a live worker holds
            self.stale: list[Lease] = []  # leases that were replaced or dropped

        def teardown(self) -> None:
            self.broker.close()
            destroy(kind, self.name)
            self.dir.cleanup()

        def now(self) -> float:
            return self.clock.now()

        def due(self, m: M) -> bool:
            return m.status == "queued" or (m.status == "scheduled" and m.run_at <= self.now())

        # -- producing and consuming ---------------------------------------------------
        @rule(n=st.integers(1, 3), delay=st.sampled_from([0.0, 0.0, 5.3, 45.1]))
        def enqueue(self, n: int, delay: float) -> None:
            jobs = [NewJob(id=new_job_id(self.now()), task="t", queue=Q, payload=PAYLOAD,
                           max_attempts=3, run_at=self.now() + delay if delay else None)
                    for _ in range(n)]
            out = self.broker.enqueue(jobs)
            assert [e.id for e in out] == [j.id for j in jobs]
            for j in jobs:
                self.model[j.id] = M("scheduled" if delay else "queued",
                                     run_at=self.now() + delay)

        @rule(limit=st.integers(1, 4))
        def reserve(self, limit: int) -> None:
            ready = {i for i, m in self.model.items() if self.due(m)}
            got = self.broker.reserve([Q], limit, "w", LEASE)
            assert {j.id for j in got} <= ready
            assert len(got) == min(limit, len(ready))
            for j in got:
                m = self.model[j.id]
                assert j.lease_token and j.status is JobStatus.RUNNING
                m.status, m.attempts, m.token = "running", m.attempts + 1, j.lease_token
                m.lease_until = self.now() + LEASE
                assert j.attempts == m.attempts
                self.held.append(Lease(j.id, j.lease_token))

        def valid(self, lease: Lease) -> bool | None:
            """True: the current unexpired lease; False: stale; None: expired, not recovered."""
            m = self.model[lease.job_id]
            if m.status != "running" or m.token != lease.token:
                return False
            return True if m.lease_until > self.now() else None

        @precondition(lambda self: self.held)
        @rule(data=st.data())
        def extend(self, data: st.DataObject) -> None:
            lease = data.draw(st.sampled_from(self.held))
            valid = self.valid(lease)
            lost = self.broker.extend([lease], LEASE)
            if valid is True:
                assert lost == []
            elif valid is False:
                assert lost == [lease.job_id], "an extend with a stale token was accepted"
            if not lost:
                self.model[lease.job_id].lease_until = self.now() + LEASE

        @precondition(lambda self: self.held)
        @rule(data=st.data(), kind_=st.sampled_from(["ok", "retry", "dead"]))
        def finish(self, data: st.DataObject, kind_: str) -> None:
            lease = data.draw(st.sampled_from(self.held))
            self.held.remove(lease)
            valid = self.valid(lease)
            status = {"ok": JobStatus.SUCCEEDED, "retry": JobStatus.SCHEDULED,
                      "dead": JobStatus.DEAD}[kind_]
            outcome = Outcome(lease.job_id, lease.token, status,
                              retry_at=self.now() + 7.1 if kind_ == "retry" else None,
                              dead_reason="retries_exhausted" if kind_ == "dead" else None,
                              error=None if kind_ == "ok" else ErrorInfo("E", "boom"))
            [accepted] = self.broker.finish([outcome])
            if valid is True:
                assert accepted
            elif valid is False:
                assert not accepted, "a finish with a stale token was accepted"
            if accepted:
                m = self.model[lease.job_id]
                m.status, m.token = status.value, None
                m.run_at = self.now() + 7.1
            self.stale.append(lease)

        @precondition(lambda self: self.stale)
        @rule(data=st.data())
        def stale_finish(self, data: st.DataObject) -> None:
            lease = data.draw(st.sampled_from(self.stale))
            if self.valid(lease) is not False:
                return
            [accepted] = self.broker.finish([Outcome(lease.job_id, lease.token,
                                                     JobStatus.SUCCEEDED)])
            assert not accepted, "a finish with a stale token was accepted"
            assert self.broker.extend([lease], LEASE) == [lease.job_id]

        @precondition(lambda self: self.held)
        @rule()
        def kill(self) -> None:
            """The worker dies: its leases are dropped on the floor (never finished)."""
            self.stale.extend(self.held)
            self.held = []

        # -- time and recovery ---------------------------------------------------------
        @rule(seconds=st.sampled_from([0.7, 11.3, 31.1]))
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule()
        def recover(self) -> None:
            expired = [i for i, m in self.model.items()
                       if m.status == "running" and m.lease_until <= self.now()]
            n = self.broker.recover()
            assert n == len(expired)
            for i in expired:
                m = self.model[i]
                m.lost += 1
                m.status, m.token = ("dead" if m.lost >= 3 else "queued"), None
            for i, m in self.model.items():
                if m.status == "running":
                    j = self.broker.get(i)
                    assert j is not None and (j.lease_until or 0) > self.now()

        # -- operating -----------------------------------------------------------------
        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def requeue(self, data: st.DataObject) -> None:
            i = data.draw(st.sampled_from(sorted(self.model)))
            m = self.model[i]
            n = self.broker.requeue([i])
            can = m.status in {"dead", "scheduled", "cancelled"}
            if m.status == "scheduled" and m.run_at <= self.now():
                # a due scheduled job may already have been promoted to queued (no-op)
                can = n == 1
            assert n == (1 if can else 0), (m.status, n)
            if can:
                m.status, m.attempts = "queued", 0
                job = self.broker.get(i)
                assert job is not None
                m.lost = job.lost_leases  # the contract says attempts reset; lost: as stored

        @precondition(lambda self: self.model)
        @rule(data=st.data())
        def cancel(self, data: st.DataObject) -> None:
            i = data.draw(st.sampled_from(sorted(self.model)))
            m = self.model[i]
            n = self.broker.cancel([i])
            assert n == (1 if m.status in WAITING else 0), (m.status, n)
            if m.status in WAITING:
                m.status = "cancelled"

        @rule()
        def purge(self) -> None:
            waiting = [m for m in self.model.values() if m.status in WAITING]
            assert self.broker.purge(Q) == len(waiting)
            for m in waiting:
                m.status = "cancelled"

        # -- invariants ----------------------------------------------------------------
        @invariant()
        def agrees_with_model(self) -> None:
            for i, m in self.model.items():
                j = self.broker.get(i)
                assert j is not None, f"job {i} vanished"
                got = j.status.value
                if m.status == "scheduled" and m.run_at <= self.now():
                    assert got in WAITING, (i, m, got)
                else:
                    assert got == m.status, (i, m, got)
                assert j.attempts == m.attempts, (i, m, j.attempts)
                if m.status == "running":
                    assert j.lease_token == m.token

        @invariant()
        def stats_agree(self) -> None:
            want = Counter(m.status for m in self.model.values())
            stats = {s.queue: s.counts for s in self.broker.queue_stats()}
            got = Counter({k: v for k, v in stats.get(Q, {}).items() if v})
            merge = ("queued", "scheduled")  # a due scheduled job may be shown as queued
            assert sum(got[k] for k in merge) == sum(want[k] for k in merge), (got, want)
            for k in ("running", *TERMINAL):
                assert got[k] == want[k], (k, got, want)

    BrokerModel.__name__ = f"BrokerModel_{kind}"
    return BrokerModel


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
def test_broker_contract_state_machine(kind: str) -> None:
    require(kind)
    run_state_machine_as_test(machine(kind), settings=settings(
        max_examples=40 if kind == "postgres" else 100, stateful_step_count=30, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
