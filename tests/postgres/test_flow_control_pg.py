"""Flow control under concurrency, PostgreSQL only: many pools, many threads, one database.

Every invariant is checked on committed state (no timings): a job counts as running for
a worker from just after its reserve returned (committed) until just before its finish is
sent, so that count never exceeds the database's own, and it must stay within the limit.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from chervil.brokers.base import JobFilter, Lease, NewJob, Outcome
from chervil.brokers.postgres import PostgresBroker
from chervil.brokers.sqlfile import migrations
from chervil.clock import FakeClock
from chervil.job import Job, JobStatus, new_job_id
from tests.conftest import POSTGRES_URL

LEASE = 300.0
THREADS = 8


def new(queue: str = "default", **kw: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="app.task", queue=queue, payload=b"{}", **kw)


def run_threads(n: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("limits", [
    # other limits among the ready jobs: every reserve takes the exact path, reserve_flow
    {"lock:a": 1, "lock:b": 1, "concurrency:t:": 3, "concurrency:u:x": 2},
    # lock and rate keys alone: the reserve statement admits them, racing for the same
    # keys, and sends the jobs it leaves out to the exact path
    {"lock:a": 1, "lock:b": 1, "lock:c": 1, "lock:d": 1},
], ids=["exact-path", "lock-keys"])
def test_eight_workers_never_exceed_a_limit(make_broker: Callable[..., PostgresBroker],
                                            clock: FakeClock, limits: dict[str, int]) -> None:
    jobs = [new(limit_key=k, limit_n=n, priority=random.randrange(3))
            for k, n in limits.items() for _ in range(60)]
    jobs += [new() for _ in range(30)]  # plain jobs in the same queue
    jobs += [new(rate_key="rate:t:", rate_per_second=1.0, rate_burst=1e6) for _ in range(30)]
    brokers = [make_broker(clock) for _ in range(THREADS)]  # one pool per "worker host"
    brokers[0].enqueue(jobs)
    total = len(jobs)
    lock = threading.Lock()
    running: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    ran: Counter[str] = Counter()
    done: set[str] = set()
    stop_spinning = threading.Event()

    def took(got: list[Job]) -> None:
        with lock:
            for j in got:
                ran[j.id] += 1
                if j.limit_key is not None:
                    running[j.limit_key] += 1
                    peak[j.limit_key] = max(peak[j.limit_key], running[j.limit_key])
                    assert running[j.limit_key] <= limits[j.limit_key], j.limit_key

    def leaving(gone: list[Job]) -> None:
        with lock:
            for j in gone:
                if j.limit_key is not None:
                    running[j.limit_key] -= 1

    def work(i: int) -> None:
        broker = brokers[i]
        rng = random.Random(i)
        held: list[Job] = []
        idle, seen = 0, -1
        while idle < 5000:  # a liveness guard only: progress anywhere resets it
            with lock:
                if len(done) == total:
                    return
                if len(done) != seen:
                    idle, seen = 0, len(done)
            # hand some back unstarted, finish the rest (some as dead), fetch more
            back = [j for j in held if rng.random() < 0.1]
            finish = [j for j in held if j not in back]
            leaving(held)
            if back:
                assert broker.release([Lease(j.id, j.lease_token or "") for j in back]) == \
                    len(back)
            outcomes = [Outcome(j.id, j.lease_token or "",
                                JobStatus.DEAD if rng.random() < 0.1 else JobStatus.SUCCEEDED,
                                dead_reason="not_retryable") for j in finish]
            accepted, held = broker.finish_and_reserve(outcomes, ["default"],
                                                       rng.randint(1, 4), f"w{i}", LEASE)
            assert all(accepted)
            with lock:
                done.update(j.id for j in finish)
            took(held)
            idle = 0 if held or finish else idle + 1
            if not held:
                stop_spinning.wait(0.001)
        raise AssertionError(f"worker {i} starved with {total - len(done)} jobs left")

    run_threads(THREADS, work)
    assert len(done) == total
    assert set(peak) == set(limits) and all(peak[k] <= n for k, n in limits.items())
    stats = {s.queue: s.counts for s in brokers[0].queue_stats()}["default"]
    assert stats.get("queued", 0) == stats.get("running", 0) == 0
    # a job waiting behind its key spent no attempt: attempts = times it was started
    # minus the times it was handed back
    for j in brokers[0].list_jobs(JobFilter(), limit=total):
        assert j.attempts == 1, (j.id, ran[j.id])


def test_concurrent_reserves_share_one_bucket(make_broker: Callable[..., PostgresBroker],
                                              clock: FakeClock) -> None:
    brokers = [make_broker(clock) for _ in range(THREADS)]
    brokers[0].enqueue([new(rate_key="rate:t:", rate_per_second=0.001, rate_burst=25)
                        for _ in range(200)])
    got: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        for _ in range(20):
            jobs = brokers[i].reserve(["default"], 3, f"w{i}", LEASE)
            with lock:
                got.extend(j.id for j in jobs)

    run_threads(THREADS, work)  # the clock stands still: only the burst is there to take
    assert len(got) == len(set(got)) == 25
    clock.advance(1000)  # one more token
    assert len(brokers[0].reserve(["default"], 10, "w", LEASE)) == 1


def test_unique_keys_under_producers_and_consumers(make_broker: Callable[..., PostgresBroker],
                                                   schema: str) -> None:
    """Mode "active": never two live jobs with one key, while jobs finish meanwhile."""
    keys = [f"sync:{i}" for i in range(200)]
    brokers = [make_broker() for _ in range(6)]
    stop = threading.Event()
    overlaps: list[Any] = []
    check = sql.SQL("SELECT unique_key FROM {}.jobs WHERE unique_key IS NOT NULL "
                    "AND status IN ('scheduled', 'queued', 'running') GROUP BY unique_key "
                    "HAVING count(*) > 1").format(sql.Identifier(schema))

    def role(i: int) -> None:
        rng = random.Random(i)
        if i == 0:  # a checker: each statement sees one committed state
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                while not stop.is_set():
                    overlaps.extend(conn.execute(check).fetchall())
        elif i < 3:  # consumers
            for _ in range(150):
                jobs = brokers[i].reserve(["default"], 8, f"w{i}", LEASE)
                brokers[i].finish([Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED)
                                   for j in jobs])
        else:  # producers
            for _ in range(15):
                batch = [new(unique_key=k) for k in rng.sample(keys, 40)]
                brokers[i].enqueue(batch)

    brokers[0].get("warm-up")  # the schema exists before the checker looks
    failed: list[BaseException] = []

    def checking() -> None:
        try:
            role(0)
        except BaseException as exc:
            failed.append(exc)

    checker = threading.Thread(target=checking)
    checker.start()
    try:
        run_threads(5, lambda i: role(i + 1))
    finally:
        stop.set()
        checker.join()
    assert failed == [] and overlaps == []


def test_window_keys_hold_across_producers(make_broker: Callable[..., PostgresBroker],
                                           clock: FakeClock) -> None:
    brokers = [make_broker(clock) for _ in range(THREADS)]
    until = clock.now() + 3600
    winners: dict[str, set[str]] = {}
    lock = threading.Lock()

    def produce(i: int) -> None:
        rng = random.Random(i)
        for _ in range(5):
            keys = rng.sample(range(100), 50)
            batch = [new(unique_key=f"mail:{k}", unique_mode="window", unique_until=until)
                     for k in keys]
            res = brokers[i].enqueue(batch)
            with lock:
                for nj, r in zip(batch, res, strict=True):
                    winners.setdefault(nj.unique_key or "", set()).add(r.id)
            # finishing does not free a window key
            jobs = brokers[i].reserve(["default"], 10, f"w{i}", LEASE)
            brokers[i].finish([Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED)
                               for j in jobs])

    run_threads(THREADS, produce)
    assert all(len(ids) == 1 for ids in winners.values())
    assert len(winners) == 100


def test_requeue_of_a_dead_job_whose_key_is_taken(broker: PostgresBroker) -> None:
    [a] = broker.enqueue([new(unique_key="k")])
    [ja] = broker.reserve(["default"], 1, "w", LEASE)
    broker.finish([Outcome(ja.id, ja.lease_token or "", JobStatus.DEAD, dead_reason="x")])
    [b] = broker.enqueue([new(unique_key="k")])
    assert not b.duplicate
    # requeued, but the key stays with b: no second holder, no integrity error
    assert broker.requeue([a.id]) == 1
    assert broker.enqueue([new(unique_key="k")])[0].id == b.id
    requeued = broker.get(a.id)
    assert requeued is not None and requeued.status is JobStatus.QUEUED
    # once b is done, a (which did not take the key back) does not hold it either
    got = broker.reserve(["default"], 5, "w", LEASE)
    broker.finish([Outcome(j.id, j.lease_token or "", JobStatus.SUCCEEDED) for j in got])
    assert not broker.enqueue([new(unique_key="k")])[0].duplicate


def test_requeue_of_a_dead_job_whose_key_is_free_holds_it_again(
        broker: PostgresBroker) -> None:
    [a] = broker.enqueue([new(unique_key="k")])
    [ja] = broker.reserve(["default"], 1, "w", LEASE)
    broker.finish([Outcome(ja.id, ja.lease_token or "", JobStatus.DEAD, dead_reason="x")])
    assert broker.requeue([a.id]) == 1
    again = broker.enqueue([new(unique_key="k")])[0]
    assert again.duplicate and again.id == a.id


def test_unique_key_in_an_autocommit_callers_connection(broker: PostgresBroker) -> None:
    broker.get("warm-up")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        [a] = broker.enqueue([new(unique_key="order:1")], connection=conn)
        [b] = broker.enqueue([new(unique_key="order:1")], connection=conn)
    assert not a.duplicate and b.duplicate and b.id == a.id


def test_slow_path_only_when_flow_control_is_in_force(broker: PostgresBroker) -> None:
    """A lock job in another queue, or a scheduled one, leaves the plain path alone."""
    broker.enqueue([new(limit_key="lock:x", limit_n=1, queue="other"),
                    new(limit_key="lock:y", limit_n=1, run_at=broker.clock.now() + 60)]
                   + [new() for _ in range(3)])
    with psycopg.connect(POSTGRES_URL) as conn:
        params = broker._reserve_params(["default"], 10, "w", LEASE)
        plan = "\n".join(r[0] for r in conn.execute(
            b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + broker._q["reserve"], params))
        conn.rollback()
    assert "Function Scan on reserve_flow r (never executed)" in plan
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 3
    assert len(broker.reserve(["other"], 10, "w", LEASE)) == 1


def _wait_until_a_statement_waits(schema: str, event: str) -> None:
    """Until a statement on ``schema`` waits for a lock of this kind (pg_stat_activity's
    wait_event: "transactionid" for another transaction's row or index entry)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as watch:
        for _ in range(1000):
            row = watch.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE wait_event = %s AND query LIKE %s",
                                (event, f"%{schema}%")).fetchone()
            if row and row[0]:
                return
            threading.Event().wait(0.01)
    raise AssertionError(f"no statement on {schema} waited for a lock ({event})")


def test_lock_keys_alone_are_admitted_by_reserve_keys(broker: PostgresBroker) -> None:
    """Ready jobs whose only keys are lock keys: reserve_keys admits them itself
    (reserve_flow does not run), the first job of each free key."""
    broker.enqueue([new(limit_key=f"lock:{k}", limit_n=1) for k in "abcab"]
                   + [new() for _ in range(2)])
    with psycopg.connect(POSTGRES_URL) as conn:
        params = broker._reserve_params(["default"], 10, "w", LEASE)
        plan = "\n".join(r[0] for r in conn.execute(
            b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + broker._q["reserve_keys"], params))
        conn.rollback()
    assert "Function Scan on reserve_flow r (never executed)" in plan
    got = broker.reserve(["default"], 10, "w", LEASE)
    assert sorted(j.limit_key or "-" for j in got) == ["-", "-", "lock:a", "lock:b", "lock:c"]


def test_the_broker_sends_reserve_keys_while_lock_keys_are_alone(
        broker: PostgresBroker) -> None:
    """reserve serves queues with no flow control; when it meets lock keys alone it says
    so, and the broker sends reserve_keys for those queues until that one meets none."""
    [p1] = broker.enqueue([new()])
    assert [j.id for j in broker.reserve(["default"], 5, "w", LEASE)] == [p1.id]
    assert broker._keyed == set()
    locked = broker.enqueue([new(limit_key=f"lock:{k}", limit_n=1) for k in "ab"])
    got = broker.reserve(["default"], 5, "w", LEASE)  # reserve, then reserve_keys
    assert sorted(j.id for j in got) == sorted(e.id for e in locked)
    assert broker._keyed == {("default",)}
    [p2] = broker.enqueue([new()])
    assert [j.id for j in broker.reserve(["default"], 5, "w", LEASE)] == [p2.id]
    assert broker._keyed == set()  # reserve_keys met no key: reserve next time


def test_rate_keys_alone_are_admitted_by_reserve_keys(
        broker: PostgresBroker, schema: str, clock: FakeClock) -> None:
    """Ready jobs whose only keys are rate keys: reserve_keys takes their tokens itself
    (reserve_flow does not run); the jobs its buckets cannot pay for go to the exact path,
    which parks them until their token is due."""
    a = [new(rate_key="rate:a", rate_per_second=1.0, rate_burst=3.0) for _ in range(5)]
    b = [new(rate_key="rate:b", rate_per_second=1.0, rate_burst=10.0) for _ in range(2)]
    plain = new()
    broker.enqueue([*b, plain])
    with psycopg.connect(POSTGRES_URL) as conn:
        params = broker._reserve_params(["default"], 10, "w", LEASE)
        plan = "\n".join(r[0] for r in conn.execute(
            b"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + broker._q["reserve_keys"], params))
        conn.rollback()
    assert "Function Scan on reserve_flow r (never executed)" in plan
    broker.enqueue(a)
    got = broker.reserve(["default"], 10, "w", LEASE)
    assert sorted(j.id for j in got) == sorted(j.id for j in a[:3] + b + [plain])
    assert [i for i, _ in _rate_parked(schema)] == [j.id for j in a[3:]]
    with psycopg.connect(POSTGRES_URL) as conn:
        tokens = dict(conn.execute(sql.SQL("SELECT key, tokens FROM {}.buckets")
                                   .format(sql.Identifier(schema))).fetchall())
    assert tokens == {"rate:a": 0.0, "rate:b": 8.0}
    clock.advance(1.0)
    assert [j.id for j in broker.reserve(["default"], 10, "w", LEASE)] == [a[3].id]


def test_a_lock_reserve_probes_each_key_however_many_jobs_run(
        broker: PostgresBroker) -> None:
    """With 2,000 lock jobs running, a reserve statement of 10 looks up the running job of
    each candidate's key in jobs_lock_running, one probe each, and reads no other entry."""
    broker.enqueue([new(limit_key=f"lock:{i}", limit_n=1) for i in range(2100)])
    for _ in range(20):
        assert len(broker.reserve(["default"], 100, "w", LEASE)) == 100
    [probe] = _plan_nodes(_reserve_plan(broker, 10), index="jobs_lock_running")
    assert probe["Actual Loops"] == 10 and probe["Actual Rows"] == 0


def test_a_rate_reserve_reads_only_its_keys_buckets(broker: PostgresBroker,
                                                    schema: str) -> None:
    """With 3,000 rate keys, a reserve of 10 jobs of 10 keys reads (to lock them) and
    writes back those 10 buckets, one lookup each, and no other."""
    from chervil.brokers.postgres import _RESERVE_PLAN

    broker.enqueue([new(rate_key=f"rate:{i}", rate_per_second=1.0, rate_burst=5.0)
                    for i in range(3000)])
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(_RESERVE_PLAN)
        got = conn.execute(broker._q["reserve_keys"],
                           broker._reserve_params(["default"], 10, "w", LEASE)).fetchall()
        stats = conn.execute(
            "SELECT seq_scan, idx_tup_fetch, n_tup_upd FROM pg_stat_xact_user_tables "
            "WHERE relid = %s::regclass",
            (sql.Identifier(schema, "buckets").as_string(conn),)).fetchone()
        conn.rollback()
    assert len(got) == 10
    assert stats == (0, 20, 10)


def _reserve_plan(broker: PostgresBroker, limit: int) -> dict[str, Any]:
    """The plan of a reserve statement as the broker sends it (its transaction's settings
    first), run under EXPLAIN ANALYZE and rolled back."""
    from chervil.brokers.postgres import _RESERVE_PLAN

    with broker._conn() as conn:
        cur = conn.cursor()
        with conn.pipeline():
            conn.execute(_RESERVE_PLAN)
            cur.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + broker._q["reserve_keys"],
                        broker._reserve_params(["default"], limit, "w", LEASE))
        row = cur.fetchone()
        conn.rollback()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _plan_nodes(node: dict[str, Any], index: str | None = None,
                relation: str | None = None) -> list[dict[str, Any]]:
    """The scans of an EXPLAIN (FORMAT JSON) plan through this index or of this table."""
    found = [node] if ((index and node.get("Index Name") == index)
                       or (relation and node.get("Relation Name") == relation
                           and node["Node Type"] != "ModifyTable")) else []
    return found + [n for child in node.get("Plans", [])
                    for n in _plan_nodes(child, index, relation)]


def test_jobs_of_a_held_lock_key_go_to_the_exact_path(broker: PostgresBroker,
                                                       schema: str) -> None:
    """A reserve statement that leaves out a job of a held lock key hands the rest of its
    batch to reserve_flow, which parks the key's backlog; a short reserve with jobs parked
    does the same (its sweep), and a finish brings back the next job of the key."""
    backlog = [new(limit_key="lock:a", limit_n=1) for _ in range(5)]
    plain = [new() for _ in range(3)]
    broker.enqueue(backlog + plain)
    got = broker.reserve(["default"], 10, "w", LEASE)
    assert sorted(j.id for j in got) == sorted(j.id for j in backlog[:1] + plain)
    assert _parked(schema) == 4
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    [held] = [j for j in got if j.limit_key]
    assert broker.finish([_done(held)]) == [True]
    [nxt] = broker.reserve(["default"], 10, "w", LEASE)
    assert nxt.id == backlog[1].id and nxt.attempts == 1


def test_a_lock_key_taken_after_the_reserve_snapshot(broker: PostgresBroker,
                                                     schema: str) -> None:
    """A job of a lock key admitted by another transaction that commits after the reserve
    statement's snapshot: the statement fails on the unique index (having waited for that
    transaction), and the exact path parks the job instead. Nothing is lost or run twice."""
    mine, theirs = new(limit_key="lock:k", limit_n=1), new(limit_key="lock:k", limit_n=1)
    other = new()
    broker.enqueue([mine, theirs, other])
    got: list[Job] = []
    with psycopg.connect(POSTGRES_URL) as conn:
        # the race's other side, made directly: the job taken, not yet committed
        conn.execute(sql.SQL("UPDATE {}.jobs SET status = 'running' WHERE id = %s")
                     .format(sql.Identifier(schema)), (theirs.id,))
        reserving = threading.Thread(
            target=lambda: got.extend(broker.reserve(["default"], 10, "w", LEASE)))
        reserving.start()
        _wait_until_a_statement_waits(schema, "transactionid")  # on the index entry
        conn.commit()
    reserving.join()
    assert [j.id for j in got] == [other.id]
    job = broker.get(mine.id)
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    assert _parked(schema) == 1


def test_the_exact_path_waits_for_the_advisory_lock_of_a_lock_key(
        broker: PostgresBroker, schema: str) -> None:
    """Both paths name a lock key's advisory lock alike: while a transaction holds it (as a
    reserve statement admitting a job of the key does until it commits), reserve_flow
    waits for it before counting the key's running jobs."""
    job = new(limit_key="lock:k", limit_n=1)
    broker.enqueue([job, new(limit_key="concurrency:t:", limit_n=2)])  # the exact path
    got: list[Job] = []
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"{schema}/lock:k",))
        reserving = threading.Thread(
            target=lambda: got.extend(broker.reserve(["default"], 10, "w", LEASE)))
        reserving.start()
        _wait_until_a_statement_waits(schema, "advisory")
        assert got == []
        conn.commit()
    reserving.join()
    assert job.id in {j.id for j in got} and len(got) == 2


def test_a_worker_not_yet_upgraded_still_reserves(broker: PostgresBroker,
                                                  schema: str) -> None:
    """A worker still running the client of schema version 10 asks flow_in_force, then
    calls reserve_flow: both still exist, and its reserve respects the lock keys that the
    reserve statement of an upgraded worker admitted."""
    a1, a2, b1 = (new(limit_key=k, limit_n=1) for k in ("lock:a", "lock:a", "lock:b"))
    broker.enqueue([a1])
    [got] = broker.reserve(["default"], 10, "w", LEASE)  # the upgraded worker's statement
    broker.enqueue([a2, b1])
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        [(in_force,)] = conn.execute("SELECT flow_in_force(ARRAY['default'], %s)",
                                     (broker.clock.now(),)).fetchall()
        old = conn.execute("SELECT id FROM reserve_flow(ARRAY['default'], 10, 'old', %s, "
                           "'t', %s)", (LEASE, broker.clock.now())).fetchall()
        conn.commit()
    assert got.id == a1.id and in_force and old == [(b1.id,)]


def test_upgrade_keeps_version_1_unique_keys(
        schema: str, make_broker: Callable[..., PostgresBroker]) -> None:
    ident = sql.Identifier(schema)
    [(_, first)] = [m for m in migrations("postgres") if m[0] == 1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(sql.SQL("CREATE TABLE {}.migrations (version integer PRIMARY KEY, "
                             "applied_at timestamptz NOT NULL DEFAULT now())").format(ident))
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute(first.encode())
            conn.execute("INSERT INTO migrations (version) VALUES (1)")
            conn.execute("INSERT INTO jobs (id, task, queue, payload, status, created_at, "
                         "run_at, unique_key) VALUES ('old', 't', 'default', '', 'queued', "
                         "0, 0, 'legacy')")
    broker = make_broker()
    res = broker.enqueue([new(unique_key="legacy")])[0]
    assert res.duplicate and res.id == "old"


def _parked(schema: str) -> int:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.jobs WHERE park = 'l'")
                           .format(sql.Identifier(schema))).fetchone()
    return int(row[0]) if row else 0


def _done(job: Job) -> Outcome:
    return Outcome(job.id, job.lease_token or "", JobStatus.SUCCEEDED)


def test_a_backlog_behind_a_full_key_is_parked(broker: PostgresBroker, schema: str) -> None:
    """The rows behind the contract test of the same name: reserve parks the jobs of a
    full key it meets at the head (1,000 per reserve), and each slot that frees brings
    back exactly one (see tests/contract/test_flow_control.py for the behaviour)."""
    backlog = [new(limit_key="acct:1", limit_n=1) for _ in range(2500)]
    broker.enqueue(backlog)
    [first] = broker.reserve(["default"], 1, "w", LEASE)
    for reserves in range(1, 4):
        assert broker.reserve(["default"], 10, "w", LEASE) == []
        assert _parked(schema) == min(1000 * reserves, len(backlog) - 1)
    assert broker.finish([_done(first)]) == [True]
    assert _parked(schema) == len(backlog) - 2


def test_one_finish_brings_back_per_key_as_many_as_it_freed(broker: PostgresBroker,
                                                           schema: str) -> None:
    """A finish of jobs of two keys is one statement: per key, it brings back as many
    parked jobs as it ended running ones, in their order, and leaves the rest parked."""
    a = [new(limit_key="acct:a", limit_n=2) for _ in range(6)]
    b = [new(limit_key="acct:b", limit_n=1) for _ in range(4)]
    broker.enqueue(a + b)
    running = broker.reserve(["default"], 10, "w", LEASE)
    assert sorted(j.id for j in running) == sorted(j.id for j in a[:2] + b[:1])
    assert broker.reserve(["default"], 10, "w", LEASE) == []  # both keys full: parked
    assert _parked(schema) == 4 + 3
    assert broker.finish([_done(j) for j in running]) == [True] * 3
    assert _parked(schema) == 2 + 2
    back = broker.reserve(["default"], 10, "w", LEASE)
    assert sorted(j.id for j in back) == sorted(j.id for j in a[2:4] + b[1:2])


def test_a_parked_job_whose_slot_freed_unseen_comes_back(broker: PostgresBroker,
                                                          schema: str) -> None:
    """A job parked while the last running job of its key was finishing (the finish saw
    nothing to bring back) comes back by the sweep: in recover, and in a short reserve."""
    jobs = [new(limit_key="acct:2", limit_n=1) for _ in range(3)]
    broker.enqueue(jobs)
    with psycopg.connect(POSTGRES_URL) as conn:  # the race's outcome, made directly
        conn.execute(sql.SQL("UPDATE {}.jobs SET park = 'l'").format(sql.Identifier(schema)))
    assert _parked(schema) == 3
    assert broker.recover() == 0
    assert _parked(schema) == 2  # one slot: one job back
    [a] = broker.reserve(["default"], 10, "w", LEASE)
    assert a.id == jobs[0].id
    # its finish, as if it missed the parked jobs (its statement trigger brings them back)
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(sql.SQL("ALTER TABLE {}.jobs DISABLE TRIGGER jobs_slots_freed")
                     .format(sql.Identifier(schema)))
    assert broker.finish([_done(a)]) == [True]
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(sql.SQL("ALTER TABLE {}.jobs ENABLE TRIGGER jobs_slots_freed")
                     .format(sql.Identifier(schema)))
    assert _parked(schema) == 2
    # a reserve that comes back short sweeps, and the next one takes the job
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    [b] = broker.reserve(["default"], 10, "w", LEASE)
    assert b.id == jobs[1].id


def test_jobs_parked_for_a_task_resumed_meanwhile_come_back(broker: PostgresBroker,
                                                            schema: str) -> None:
    """Jobs a reserve parked for a paused task while the task was being resumed (the
    resume saw nothing to bring back) come back by the sweep in recover."""
    jobs = [new() for _ in range(3)]
    broker.enqueue(jobs)
    with psycopg.connect(POSTGRES_URL) as conn:  # the race's outcome, made directly
        conn.execute(sql.SQL("UPDATE {}.jobs SET park = 't'").format(sql.Identifier(schema)))
    assert broker.reserve(["default"], 10, "w", LEASE) == []  # short: it sweeps
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 3
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute(sql.SQL("UPDATE {}.jobs SET park = 't', status = 'queued'")
                     .format(sql.Identifier(schema)))
    assert broker.recover() == 0
    assert len(broker.reserve(["default"], 10, "w", LEASE)) == 3


def _rate_parked(schema: str) -> list[tuple[str, float]]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(sql.SQL("SELECT id, park_due FROM {}.jobs WHERE park = 'r' "
                                    "ORDER BY park_due").format(sql.Identifier(schema)))
        return [(r[0], float(r[1])) for r in rows]


def test_jobs_of_an_empty_bucket_are_parked_one_token_apart(broker: PostgresBroker,
                                                            schema: str,
                                                            clock: FakeClock) -> None:
    """The rows behind the contract test of the rate-limited backlog: reserve parks the
    jobs of an empty bucket it meets at the head (1,000 per reserve), the n-th due when
    the bucket will hold n tokens, in their order; a later parking lines up after the
    key's last parked job."""
    backlog = [new(rate_key="rate:r", rate_per_second=2.0, rate_burst=1.0)
               for _ in range(1500)]
    broker.enqueue(backlog)
    now = clock.now()
    [first] = broker.reserve(["default"], 1, "w", LEASE)
    assert first.id == backlog[0].id
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    parked = _rate_parked(schema)
    assert [i for i, _ in parked] == [j.id for j in backlog[1:1001]]
    assert [due for _, due in parked[:3]] == [now + 0.5, now + 1.0, now + 1.5]
    assert broker.reserve(["default"], 10, "w", LEASE) == []
    parked = _rate_parked(schema)
    assert [i for i, _ in parked] == [j.id for j in backlog[1:]]
    assert parked[-1][1] == now + 0.5 * (len(backlog) - 1)
    clock.advance(0.5)  # one token: the first parked job comes back, and only it
    assert [j.id for j in broker.reserve(["default"], 10, "w", LEASE)] == [backlog[1].id]
    assert len(_rate_parked(schema)) == len(backlog) - 2


def test_reserve_and_next_due_read_no_parked_backlog(broker: PostgresBroker, schema: str,
                                                     clock: FakeClock) -> None:
    """With thousands of parked jobs (of an empty bucket and of a held lock) and fresh
    statistics that say so, reserve and next_due read jobs only through indexes: no
    sequential scan of jobs, and few rows (counted by the server's statistics of the
    transaction, which see inside reserve_flow and flow_in_force)."""
    broker.enqueue([new(rate_key="rate:s", rate_per_second=0.01, rate_burst=1.0)
                    for _ in range(3000)])
    broker.enqueue([new(limit_key="lock:s", limit_n=1) for _ in range(3000)])
    broker.enqueue([new() for _ in range(100)])
    while len(broker.reserve(["default"], 10, "w", LEASE)) == 0 or _parked(schema) < 2999:
        pass
    assert len(_rate_parked(schema)) == 2999
    jobs = sql.Identifier(schema, "jobs")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(jobs))
    with psycopg.connect(POSTGRES_URL) as conn:
        for name, params in [("reserve", {"queues": ["default"], "limit": 10, "worker": "w",
                                          "lease": LEASE, "token": "t", "fast": True,
                                          "schema": schema}),
                             ("next_due", {"queues": ["default"]})]:
            conn.execute(broker._q[name], broker._params(**params)).fetchall()
            seq, seq_read, idx_read = conn.execute(
                "SELECT seq_scan, seq_tup_read, idx_tup_fetch FROM pg_stat_xact_user_tables "
                "WHERE relid = %s::regclass", (jobs.as_string(conn),)).fetchone() or (0, 0, 0)
            assert seq == 0 and seq_read == 0, f"{name} scanned jobs"
            assert idx_read < 500, f"{name} read {idx_read} rows of jobs"
        conn.rollback()


def test_prune_passes_over_a_unique_key_a_producer_is_taking(broker: PostgresBroker) -> None:
    """A producer taking a unique key again (its row locked by the producer's open
    transaction) is neither waited for nor undone by prune: the key row is skipped, and
    after the commit the new job holds the key."""
    [old] = broker.enqueue([new(unique_key="sync:7")])
    [j] = broker.reserve(["default"], 1, "w", LEASE)
    assert broker.finish([_done(j)]) == [True]  # the key is free: its row may be pruned
    with psycopg.connect(POSTGRES_URL) as conn:
        [again] = broker.enqueue([new(unique_key="sync:7")], connection=conn)
        assert not again.duplicate and again.id != old.id
        broker.prune(0.0, 0.0)  # the row is locked by the open transaction: passed over
        conn.commit()
    assert broker.enqueue([new(unique_key="sync:7")])[0].id == again.id
    [j] = broker.reserve(["default"], 1, "w", LEASE)
    assert broker.finish([_done(j)]) == [True]
    broker.prune(0.0, 0.0)
    with broker._conn() as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}.unique_keys")
                           .format(broker._schema)).fetchone()
    assert row is not None and row[0] == 0


def test_enqueues_of_lock_jobs_never_scan_the_table(
        make_broker: Callable[..., PostgresBroker], schema: str) -> None:
    """An enqueue with a lock key checks whether its id is taken by a primary-key probe.
    Planned as a join, it read the whole table instead: here at each of the 18 batches,
    and in the generic plan the driver switches to after five executions, at single
    enqueues too (one cost 33 ms with 100,000 jobs waiting, against 0.8 ms now)."""
    def seq_scans() -> int:
        # a backend's counts reach the statistics when it exits: wait for them to settle
        last, stable = -1, 0
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for _ in range(50):
                [[n]] = conn.execute("SELECT seq_scan FROM pg_stat_user_tables "
                                     "WHERE schemaname = %s AND relname = 'jobs'",
                                     (schema,)).fetchall()
                stable = stable + 1 if n == last else 0
                if stable >= 3:
                    break
                last = n
                conn.execute("SELECT pg_sleep(0.1)")
        return int(last)

    broker = make_broker()
    broker.get("none")  # the schema exists
    before = seq_scans()
    for _ in range(18):
        broker.enqueue([new(limit_key=f"acct:{i}", limit_n=1) for i in range(1000)])
    for i in range(20):
        broker.enqueue([new(limit_key=f"acct:{i}", limit_n=1)])
    broker.close()  # its connections' counts reach the statistics as they exit
    assert seq_scans() == before
