"""PostgreSQL-specific behaviour beyond the conformance suite."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from chervil.brokers.base import Lease, NewJob, Outcome
from chervil.brokers.postgres import PostgresBroker
from chervil.clock import FakeClock, SystemClock
from chervil.job import JobStatus, new_job_id
from tests.conftest import POSTGRES_URL

LEASE = 30.0


def new(queue: str = "default", **kw: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="app.task", queue=queue, payload=b"{}", **kw)


class SkewedClock(SystemClock):
    """A host whose clock runs an hour ahead."""

    def now(self) -> float:
        return time.time() + 3600


def server_now() -> float:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        assert row is not None
        return float(row[0])


def test_system_clock_means_the_servers_clock(
        make_broker: Callable[..., PostgresBroker]) -> None:
    broker = make_broker(SkewedClock())
    [jid] = [e.id for e in broker.enqueue([new()])]
    [job] = broker.reserve(["default"], 1, "w", LEASE)
    server = server_now()
    assert job.id == jid
    # an hour of skew would show; the server's own time is within minutes of itself
    assert abs(job.created_at - server) < 600 and abs((job.started_at or 0) - server) < 600
    assert job.lease_until is not None and abs(job.lease_until - (server + LEASE)) < 600
    assert broker.recover() == 0  # the skewed host cannot expire a valid lease


def test_terminal_counts_match_the_rows(broker: PostgresBroker, schema: str,
                                        clock: FakeClock) -> None:
    broker.enqueue([new("a") for _ in range(6)] + [new("b") for _ in range(4)])
    jobs = broker.reserve(["a", "b"], 7, "w", LEASE)
    outcomes = [Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED) for j in jobs[:3]]
    outcomes += [Outcome(j.id, j.lease_token or "", JobStatus.DEAD, dead_reason="x")
                 for j in jobs[3:5]]
    assert all(broker.finish(outcomes))
    broker.cancel([j.id for j in broker.list_jobs(_filter(JobStatus.QUEUED), limit=2)])
    broker.requeue([jobs[3].id])
    clock.advance(LEASE + 1)
    broker.recover()
    broker.purge("b")
    clock.advance(10)
    broker.prune(succeeded_before=clock.now(), dead_before=clock.now() - 100, batch=1)
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(sql.SQL("SELECT queue, status, count(*) FROM {}.jobs "
                                    "GROUP BY queue, status").format(sql.Identifier(schema)))
        truth: dict[str, dict[str, int]] = {}
        for queue, status, n in rows:
            truth.setdefault(queue, {})[status] = n
    stats = {s.queue: s.counts for s in broker.queue_stats()}
    assert stats == truth
    assert "succeeded" not in stats.get("a", {}) and "succeeded" not in stats.get("b", {})


def _filter(status: JobStatus) -> Any:
    from chervil.brokers.base import JobFilter

    return JobFilter(status=status)


def test_enqueue_many_resolves_repeats_inside_one_batch(broker: PostgresBroker) -> None:
    a = new(unique_key="k")
    b = new(unique_key="k")
    c = new()
    res = broker.enqueue([a, b, c, c, a] + [new() for _ in range(500)])
    assert [(r.id, r.duplicate) for r in res[:5]] == [
        (a.id, False), (a.id, True), (c.id, False), (c.id, True), (a.id, True)]
    assert sum(s.ready for s in broker.queue_stats()) == 502


def test_enqueue_racing_a_concurrent_unique_key(broker: PostgresBroker) -> None:
    broker.get("warm-up")
    other = new(unique_key="race")
    results: list[Any] = []
    with psycopg.connect(POSTGRES_URL) as conn:
        assert not broker.enqueue([other], connection=conn)[0].duplicate
        t = threading.Thread(target=lambda: results.append(
            broker.enqueue([new(unique_key="race")])))
        t.start()
        t.join(0.5)  # let it block on the uncommitted key (either order is correct)
        conn.commit()
    t.join()
    [[res]] = results
    assert res.duplicate and res.id == other.id


def test_finish_and_reserve_in_one_transaction(broker: PostgresBroker) -> None:
    broker.enqueue([new() for _ in range(4)])
    a, b = broker.reserve(["default"], 2, "w", LEASE)
    accepted, jobs = broker.finish_and_reserve(
        [Outcome(a.id, a.lease_token or "", JobStatus.SUCCEEDED, result="1"),
         Outcome(b.id, "stale", JobStatus.SUCCEEDED)], ["default"], 5, "w", LEASE)
    assert accepted == [True, False] and len(jobs) == 2
    assert {j.id for j in jobs}.isdisjoint({a.id, b.id})
    done = broker.get(a.id)
    assert done is not None and done.status is JobStatus.SUCCEEDED and done.result == "1"
    assert broker.finish_and_reserve([], ["default"], 5, "w", LEASE) == ([], [])
    accepted, jobs = broker.finish_and_reserve(
        [Outcome(b.id, b.lease_token or "", JobStatus.SUCCEEDED)], ["default"], 0, "w", LEASE)
    assert accepted == [True] and jobs == []


def test_wait_wakes_on_a_release_from_another_broker(
        make_broker: Callable[..., PostgresBroker], broker: PostgresBroker) -> None:
    other = make_broker(FakeClock(broker.clock.now()))
    broker.enqueue([new("q")])
    [job] = other.reserve(["q"], 1, "w", LEASE)
    broker.wait(["q"], timeout=0)  # sets up the listening connection
    timer = threading.Timer(0.2, lambda: other.release([Lease(job.id, job.lease_token or "")]))
    timer.start()
    start = time.monotonic()
    broker.wait(["q"], timeout=20.0)
    timer.join()
    assert time.monotonic() - start < 10.0, "wait() slept to its timeout"
    assert len(broker.reserve(["q"], 1, "w", LEASE)) == 1


def test_threads_waiting_in_turn_share_one_listening_connection(
        make_broker: Callable[..., PostgresBroker], broker: PostgresBroker) -> None:
    # a worker's fetcher role moves from thread to thread: each NOTIFY wakes the server
    # process of every LISTENing connection, so a child keeps one, not one per thread
    for _ in range(4):
        t = threading.Thread(target=broker.wait, args=(["q"], 0.01))
        t.start()
        t.join()
    assert len(broker._listeners) == 1
    # two threads waiting at once each get one, and both wake on an enqueue
    other = make_broker(FakeClock(broker.clock.now()))
    woke: list[float] = []
    waiters = [threading.Thread(target=lambda: (broker.wait(["q"], 20.0),
                                                woke.append(time.monotonic())))
               for _ in range(2)]
    for t in waiters:
        t.start()
    time.sleep(0.3)
    start = time.monotonic()
    other.enqueue([new("q")])
    for t in waiters:
        t.join(15.0)
    assert len(woke) == 2 and max(woke) - start < 10.0, "a waiter slept to its timeout"
    assert len(broker._listeners) == 2
    broker.wait(["q"], 0.01)
    assert len(broker._listeners) == 2  # reused, not a third


def test_wait_is_capped_by_the_next_scheduled_job(
        make_broker: Callable[..., PostgresBroker]) -> None:
    broker = make_broker()  # system clock: the server's time
    broker.enqueue([new("q", run_at=server_now() + 0.3)])
    start = time.monotonic()
    broker.wait(["q"], timeout=20.0)
    assert time.monotonic() - start < 10.0, "wait() ignored the scheduled job"


def test_prune_in_batches(broker: PostgresBroker, clock: FakeClock) -> None:
    broker.enqueue([new() for _ in range(23)])
    jobs = broker.reserve(["default"], 23, "w", LEASE)
    broker.finish([Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED) for j in jobs[:20]]
                  + [Outcome(j.id, j.lease_token or "", JobStatus.DEAD, dead_reason="x")
                     for j in jobs[20:]])
    clock.advance(1)
    assert broker.prune(clock.now(), clock.now(), batch=7) == 23
    assert broker.queue_stats() == []


def test_workers_info_round_trips_through_jsonb(broker: PostgresBroker) -> None:
    from chervil.brokers.base import WorkerInfo

    info = WorkerInfo(id="h:1", host="h", pid=1, queues=("a", "b"), tasks={"t": "v"},
                      started_at=1.5, jobs=("j1",), counters={"ok": 2})
    broker.register_worker(info)
    [got] = broker.workers()
    assert json.dumps(got.to_dict(), sort_keys=True) == json.dumps(
        {**info.to_dict(), "seen_at": broker.clock.now()}, sort_keys=True)


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan] + [n for child in plan.get("Plans", []) for n in _plan_nodes(child)]


def test_reserve_walks_the_ready_index_on_a_new_table(broker: PostgresBroker) -> None:
    """A new table (no statistics yet) with 20,000 waiting jobs: sent the way reserve sends
    it (sorting made the last resort for the pipeline's implicit transaction), the
    statement reads the head of jobs_ready and stops, where the planner would otherwise
    read and sort the whole backlog."""
    from chervil.brokers.postgres import _RESERVE_PLAN

    for _ in range(4):
        broker.enqueue([new() for _ in range(5000)])
    params = broker._reserve_params(["default"], 10, "w", LEASE)
    with broker._conn() as conn:
        cur = conn.cursor()
        with conn.pipeline():
            conn.execute(_RESERVE_PLAN)
            cur.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + broker._q["reserve"], params)
        row = cur.fetchone()
        assert row is not None
        nodes = _plan_nodes(row[0][0]["Plan"])
        assert conn.execute("SHOW enable_sort").fetchone() == ("on",)  # the pipeline's only
    read = sum(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0)
               for n in nodes if n.get("Relation Name") == "jobs"
               and n["Node Type"] != "ModifyTable")
    assert not any(n["Node Type"] == "Sort" for n in nodes)
    assert read <= 100, f"reserve read {read} rows of jobs"


def test_leased_statements_read_one_row_per_job_however_many_run(
        broker: PostgresBroker, schema: str) -> None:
    """20,000 waiting jobs and statistics taken while nothing ran (so they say almost no
    job is running), then 250 running: finish, with the generic plan it gets in reserve's
    pipeline (made once per connection), and extend, as the heartbeat sends it, read one
    row per job of their batch, not every running job."""
    from chervil.brokers.postgres import _RESERVE_PLAN

    for _ in range(4):
        broker.enqueue([new() for _ in range(5000)])
    jobs = sql.Identifier(schema, "jobs")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(jobs))
    held = broker.reserve(["default"], 250, "w", LEASE)
    assert len(held) == 250
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(_RESERVE_PLAN)
        for k in range(6):  # prepared: generic from the first run (plan_cache_mode)
            batch = held[10 * k:10 * k + 10]
            outcomes = [Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED) for j in batch]
            done = conn.execute(broker._q["finish"], broker._params(
                **broker._finish_params(outcomes)), prepare=True).fetchall()
            assert len(done) == 10
        batch = held[100:110]
        extended = conn.execute(broker._q["extend"], broker._params(
            ids=[j.id for j in batch], tokens=[j.lease_token for j in batch],
            lease=LEASE)).fetchall()
        assert len(extended) == 10
        seq, idx_read = conn.execute(
            "SELECT seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables "
            "WHERE relid = %s::regclass", (jobs.as_string(conn),)).fetchone() or (0, 0)
        conn.rollback()
    assert seq == 0 and idx_read <= 2 * 70, f"read {seq} + {idx_read} rows for 70 jobs"
