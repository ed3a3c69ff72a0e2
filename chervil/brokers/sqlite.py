"""The embedded broker: one SQLite file, many processes on one host.

WAL journal, every write in ``BEGIN IMMEDIATE`` (so a transaction never upgrades a read
lock and deadlocks), a long ``busy_timeout`` plus a retry loop so "database is locked"
never reaches a user, and ``synchronous=FULL`` by default: a commit is on disk before
enqueue returns. ``synchronous=NORMAL`` is an opt-in (``?synchronous=normal`` in the URL)
that may lose the last commits on power loss, never on a process crash.

Statements live in ``sql/sqlite.sql``; the schema in numbered ``sql/sqlite_NNNN_*.sql``
migrations, tracked with ``PRAGMA user_version``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import ConfigurationError
from ..job import ErrorInfo, Job, JobStatus, job_from_row
from .base import (
    Broker,
    Enqueued,
    JobFilter,
    Lease,
    NewJob,
    Outcome,
    QueueStats,
    WorkerInfo,
)
from .sqlfile import load_queries
from .sqlite_db import SQLiteDatabase
from .wake import Waker, wake_dir

Q = load_queries("sqlite.sql")
_SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}


def _row_to_job(row: Sequence[Any]) -> Job:
    return job_from_row(row, bytes(row[3]) if row[3] is not None else b"",
                        json.loads(row[21]) if row[21] else {})


PARK_BATCH = 5000  # jobs of one full key, paused task or empty bucket parked per look


def _admit(conn: sqlite3.Connection, queue: str, want: int, now: float) -> list[int]:
    """Pick up to ``want`` ready jobs of ``queue`` that flow control lets run now (rowids).

    The batch is kept within each key's free slots and tokens, and the tokens taken are
    written back. The jobs of a paused task, of a key found full or of an empty bucket are
    parked (sqlite_0004 to sqlite_0006) and the candidates read again past them, so such a
    backlog is stepped over once.
    """
    ids: list[int] = []
    taken: set[int] = set()
    free: dict[str, int] = {}
    buckets: dict[str, list[float]] = {}  # key -> [tokens, rate, burst]
    paused = {r[0] for r in conn.execute(Q["paused_tasks"])}
    for _ in range(20):  # at most 20 x PARK_BATCH jobs parked by one reserve
        parked, full = False, []
        held_tasks: set[str] = set()  # paused tasks met, their jobs parked
        held_rates: set[str] = set()  # keys of empty buckets met, their jobs parked
        # read as far as needed: the candidates past a full batch are read only when
        # some before them were held back (parking below does not disturb the read)
        rows = conn.execute(Q["reserve_candidates"], (queue, want * 4 + 16))
        for rowid, task, limit_key, limit_n, rate_key, rate, burst in rows:
            if rowid in taken:
                continue
            if task in paused:
                if task not in held_tasks:
                    held_tasks.add(task)
                    conn.execute(Q["park_task"], (queue, task, PARK_BATCH))
                    parked = True
                continue
            if limit_key is not None:
                if limit_key not in free:
                    running = conn.execute(Q["running_for_key"], (limit_key,)).fetchone()[0]
                    free[limit_key] = limit_n - running
                    if free[limit_key] <= 0:
                        conn.execute(Q["park_key"], (limit_key, running, PARK_BATCH))
                        parked = True
                        full.append(limit_key)
                if free[limit_key] <= 0:
                    continue
            if rate_key is not None:
                if rate_key not in buckets:
                    b = conn.execute(Q["bucket"], (rate_key,)).fetchone()
                    tokens = burst if b is None else min(burst, b[0] + (now - b[1]) * rate)
                    buckets[rate_key] = [tokens, rate, burst]
                if buckets[rate_key][0] < 1:
                    if rate_key not in held_rates:
                        held_rates.add(rate_key)
                        conn.execute(Q["park_rate"], (rate_key, now, buckets[rate_key][0],
                                                      rate, PARK_BATCH, json.dumps(ids)))
                        parked = True
                    continue
                buckets[rate_key][0] -= 1
            if limit_key is not None:
                free[limit_key] -= 1
            ids.append(rowid)
            taken.add(rowid)
            if len(ids) >= want:
                break
        rows.close()
        if not parked or len(ids) >= want:
            break
        for key in full:  # counted again if their jobs still stand at the head
            del free[key]
    for key, (tokens, rate, burst) in buckets.items():
        conn.execute(Q["save_bucket"], (key, tokens, now, rate, burst))
    return ids


class SQLiteBroker(Broker):
    def __init__(self, path: str, clock: Clock | None = None, synchronous: str = "full",
                 busy_timeout: float = 60.0, max_lost_leases: int = 3) -> None:
        if synchronous.lower() not in _SYNC_MODES:
            raise ConfigurationError(
                f"SQLite synchronous={synchronous!r} is not allowed; use 'full' (the durable "
                "default) or 'normal' (faster, may lose the last commits on power loss)")
        self.path = path
        self.clock = clock or SystemClock()
        self.max_lost_leases = max_lost_leases
        self.db = SQLiteDatabase(path, _SYNC_MODES[synchronous.lower()], busy_timeout)
        self._wake_dir = wake_dir(path)
        self._waker = Waker(self._wake_dir)

    # -- producing -----------------------------------------------------------------------
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Enqueued]:
        now = self.clock.now()

        def tx(conn: sqlite3.Connection) -> list[Enqueued]:
            out = []
            for j in jobs:
                if j.unique_key is not None:
                    holder = conn.execute(Q["unique_holder"], (j.unique_key, now)).fetchone()
                    if holder is not None:
                        out.append(Enqueued(holder[0], duplicate=True))
                        continue
                run_at = now if j.run_at is None else j.run_at
                status = JobStatus.SCHEDULED if run_at > now else JobStatus.QUEUED
                cur = conn.execute(Q["insert_job"], (
                    j.id, j.task, j.queue, j.priority, j.payload, status.value, j.max_attempts,
                    now, run_at, j.unique_key, j.task_version,
                    json.dumps(j.trace) if j.trace else None, j.limit_key, j.limit_n,
                    j.rate_key, j.rate_per_second, j.rate_burst))
                if cur.rowcount == 0:  # this id exists: enqueue is idempotent by id
                    out.append(Enqueued(j.id, duplicate=True))
                    continue
                if j.unique_key is not None:
                    conn.execute(Q["take_unique"], (j.unique_key, j.id, j.unique_mode,
                                                    j.unique_until))
                out.append(Enqueued(j.id))
            return out
        if connection is not None:
            if not isinstance(connection, sqlite3.Connection):
                raise ConfigurationError(
                    "the SQLite broker enqueues inside a sqlite3.Connection to its own file; "
                    f"got {type(connection).__name__}")
            if not connection.in_transaction:
                connection.execute("BEGIN IMMEDIATE")
            result = tx(connection)
            # Workers see the jobs once the caller commits; they find them by their next
            # poll, or by the wake-up that any later enqueue or finish sends.
            return result
        result = self.db.write(tx)
        self._waker.notify()
        return result

    # -- consuming -----------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], limit: int, worker: str,
                lease_seconds: float) -> list[Job]:
        if limit <= 0:
            return []
        return self.finish_and_reserve([], queues, limit, worker, lease_seconds)[1]

    def finish_and_reserve(self, outcomes: Sequence[Outcome], queues: Sequence[str],
                           limit: int, worker: str, lease_seconds: float
                           ) -> tuple[list[bool], list[Job]]:
        """Both in one transaction: one commit (one fsync) per worker cycle."""
        if not outcomes and limit <= 0:
            return [], []
        now = self.clock.now()

        def tx(conn: sqlite3.Connection) -> tuple[list[bool], list[Job]]:
            accepted = self._finish_tx(conn, outcomes, now) if outcomes else []
            jobs = self._reserve_tx(conn, queues, limit, worker, lease_seconds, now)
            return accepted, jobs
        accepted, jobs = self.db.write(tx)
        if any(o.status is JobStatus.SCHEDULED for o in outcomes):
            self._waker.notify()  # a retry may be due before a waiter's timeout
        # RETURNING gives rows in no promised order: restore the reserve order.
        order = {q: i for i, q in enumerate(queues)}
        jobs.sort(key=lambda j: (order[j.queue], -j.priority, j.run_at, j.id))
        return accepted, jobs

    @staticmethod
    def _reserve_tx(conn: sqlite3.Connection, queues: Sequence[str], limit: int, worker: str,
                    lease_seconds: float, now: float) -> list[Job]:
        if limit <= 0:
            return []
        token = uuid.uuid4().hex
        conn.execute(Q["promote_due"], (now,))
        conn.execute(Q["unpark_rate_due"], (now,))
        paused = {r[0] for r in conn.execute(Q["paused_queues"])}
        jobs: list[Job] = []
        for queue in queues:
            if queue in paused:
                continue
            want = limit - len(jobs)
            if conn.execute(Q["flow_control_active"], (queue,)).fetchone()[0]:
                ids = _admit(conn, queue, want, now)
                sql = Q["reserve_ids"].replace("(?)", f"({','.join('?' * len(ids))})")
                rows = conn.execute(sql, (token, now + lease_seconds, now, worker, *ids)
                                    ).fetchall() if ids else []
            else:
                rows = conn.execute(Q["reserve"], (token, now + lease_seconds, now, worker,
                                                   queue, want)).fetchall()
            jobs.extend(_row_to_job(r) for r in rows)
            if len(jobs) >= limit:
                break
        return jobs

    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        if not leases:
            return []
        until = self.clock.now() + lease_seconds

        def tx(conn: sqlite3.Connection) -> list[str]:
            return [lease.job_id for lease in leases
                    if conn.execute(Q["extend"], (until, lease.job_id, lease.token)).rowcount
                    == 0]
        return self.db.write(tx)

    def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        return self.finish_and_reserve(outcomes, (), 0, "", 0.0)[0]

    @staticmethod
    def _finish_tx(conn: sqlite3.Connection, outcomes: Sequence[Outcome],
                   now: float) -> list[bool]:
        accepted: dict[int, bool] = {}
        # Plain successes of one reserve batch share a lease token: one statement each.
        plain: dict[str, list[int]] = {}
        for i, o in enumerate(outcomes):
            if o.status is JobStatus.SUCCEEDED and o.result is None and o.error is None:
                plain.setdefault(o.lease_token, []).append(i)
        for token, idx in plain.items():
            for start in range(0, len(idx), 500):
                chunk = idx[start:start + 500]
                marks = ",".join("?" * len(chunk))
                done = {r[0] for r in conn.execute(
                    Q["finish_succeeded_many"].replace("(?)", f"({marks})"),
                    (now, token, *[outcomes[i].job_id for i in chunk]))}
                for i in chunk:
                    accepted[i] = outcomes[i].job_id in done
        for i, o in enumerate(outcomes):
            if i in accepted:
                continue
            error = o.error.to_json() if o.error else None
            if o.status is JobStatus.SUCCEEDED:
                cur = conn.execute(Q["finish_succeeded"],
                                   (now, o.result, error, o.job_id, o.lease_token))
            elif o.status is JobStatus.SCHEDULED:
                cur = conn.execute(Q["finish_retry"], (o.retry_at or now, error, o.job_id,
                                                       o.lease_token))
            elif o.status is JobStatus.DEAD:
                cur = conn.execute(Q["finish_dead"], (now, o.dead_reason, error, o.job_id,
                                                      o.lease_token))
            else:
                raise ValueError(f"an outcome cannot have status {o.status}")
            accepted[i] = cur.rowcount == 1
        return [accepted[i] for i in range(len(outcomes))]

    def release(self, leases: Sequence[Lease], delay: float = 0.0) -> int:
        if not leases:
            return 0
        now = self.clock.now()

        def tx(conn: sqlite3.Connection) -> int:
            return sum(conn.execute(Q["release"], (delay, now + delay, lease.job_id,
                                                   lease.token)).rowcount for lease in leases)
        n = self.db.write(tx)
        self._waker.notify()
        return n

    def recover(self, leases: Sequence[Lease] | None = None) -> int:
        now = self.clock.now()
        limit = self.max_lost_leases
        error = ErrorInfo("LeaseLost", "the worker holding this job's lease stopped "
                          "renewing it (crashed, killed or hung)").to_json()

        def tx(conn: sqlite3.Connection) -> int:
            targets = (list(leases) if leases is not None else
                       [Lease(r[0], r[1]) for r in conn.execute(Q["expired_leases"], (now,))])
            return sum(conn.execute(Q["recover_one"], (limit, limit, limit, now, error, now,
                                                       lease.job_id, lease.token)).rowcount
                       for lease in targets)
        n = self.db.write(tx)
        if n:
            self._waker.notify()
        return n

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        waiter = self.db.waiter(self._wake_dir)
        row = self.db.read(Q["next_due"])
        if row and row[0][0] is not None:
            timeout = min(timeout, max(0.0, row[0][0] - self.clock.now()))
        if timeout > 0:
            waiter.wait(timeout)

    # -- operating -----------------------------------------------------------------------
    def requeue(self, ids: Sequence[str]) -> int:
        now = self.clock.now()
        n = self.db.write(lambda c: sum(c.execute(Q["requeue"], (now, i)).rowcount for i in ids))
        self._waker.notify()
        return n

    def requeue_dead(self, queue: str | None = None, task: str | None = None) -> int:
        now = self.clock.now()
        n = self.db.write(lambda c: c.execute(Q["requeue_dead"],
                                            (now, queue, queue, task, task)).rowcount)
        self._waker.notify()
        return n

    def cancel(self, ids: Sequence[str]) -> int:
        now = self.clock.now()
        return self.db.write(lambda c: sum(c.execute(Q["cancel"], (now, i)).rowcount
                                         for i in ids))

    def purge(self, queue: str) -> int:
        now = self.clock.now()
        return self.db.write(lambda c: c.execute(Q["purge"], (now, queue)).rowcount)

    def set_paused(self, queue: str, paused: bool) -> None:
        self.db.write(lambda c: c.execute(Q["set_paused"], (queue, int(paused))))
        if not paused:
            self._waker.notify()

    def prune(self, succeeded_before: float, dead_before: float, batch: int = 1000) -> int:
        total = 0
        while True:
            n = self.db.write(lambda c: c.execute(Q["prune"], (succeeded_before, dead_before,
                                                             batch)).rowcount)
            total += n
            if n < batch:
                break
        now = self.clock.now()
        for name in ("prune_unique", "prune_buckets"):  # rows no job needs any more
            def forget(c: sqlite3.Connection, query: str = Q[name]) -> int:
                return int(c.execute(query, (now, batch)).rowcount)

            while self.db.write(forget) >= batch:
                pass
        return total

    # -- inspecting ----------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        rows = self.db.read(Q["get"], (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def list_jobs(self, filter: JobFilter, limit: int = 100,
                  before_id: str | None = None) -> list[Job]:
        status = filter.status.value if filter.status else None
        rows = self.db.read(Q["list_jobs"], (status, filter.queue, filter.task, before_id, limit))
        return [_row_to_job(r) for r in rows]

    def queue_stats(self) -> list[QueueStats]:
        now = self.clock.now()
        counts: dict[str, dict[str, int]] = {}
        for queue, status, n in self.db.read(Q["count_by_status"]):
            counts.setdefault(queue, {})[status] = n
        oldest = dict(self.db.read(Q["oldest_ready"]))
        paused = {name: bool(p) for name, p in self.db.read(Q["all_queues"])}
        names = sorted(set(counts) | set(paused))
        return [QueueStats(q, counts.get(q, {}),
                           max(0.0, now - oldest[q]) if q in oldest else None,
                           paused.get(q, False)) for q in names]

    # -- flow control and scheduling ------------------------------------------------------
    def set_task_paused(self, task: str, paused: bool) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(Q["pause_task" if paused else "resume_task"], (task,))
            if not paused:  # its parked jobs come back (sqlite_0005)
                conn.execute(Q["unpark_task"], (task,))
        self.db.write(tx)
        if not paused:
            self._waker.notify()

    def paused_tasks(self) -> list[str]:
        return [r[0] for r in self.db.read(Q["paused_tasks"])]

    def schedule_marks(self) -> dict[str, float]:
        return dict(self.db.read(Q["schedule_marks"]))

    def mark_schedule(self, name: str, fire_at: float) -> None:
        self.db.write(lambda c: c.execute(Q["mark_schedule"], (name, fire_at)))

    # -- workers and coordination --------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        now = self.clock.now()
        data = json.dumps({**info.to_dict(), "seen_at": now})
        self.db.write(lambda c: c.execute(Q["upsert_worker"], (info.id, data, now)))

    def unregister_worker(self, worker_id: str) -> None:
        self.db.write(lambda c: c.execute(Q["delete_worker"], (worker_id,)))

    def workers(self, seen_within: float = 60.0) -> list[WorkerInfo]:
        rows = self.db.read(Q["live_workers"], (self.clock.now() - seen_within,))
        return [WorkerInfo.from_dict(json.loads(info)) for info, _ in rows]

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        now = self.clock.now()
        return bool(self.db.write(lambda c: c.execute(
            Q["acquire_lease"], (name, owner, now + ttl, now)).rowcount))

    def release_lease(self, name: str, owner: str) -> None:
        self.db.write(lambda c: c.execute(Q["release_lease"], (name, owner)))

    def close(self) -> None:
        self.db.close()
        self._waker.close()


def from_url(url: str, clock: Clock | None = None) -> SQLiteBroker:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, options as query string."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path:
        raise ConfigurationError(f"SQLite URL {url!r} names no file; write sqlite:///chervil.db")
    opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(opts) - {"synchronous", "busy_timeout"}
    if unknown:
        raise ConfigurationError(
            f"unknown SQLite URL option(s) {sorted(unknown)}; known: synchronous, busy_timeout")
    return SQLiteBroker(os.path.expanduser(path), clock=clock,
                        synchronous=opts.get("synchronous", "full"),
                        busy_timeout=float(opts.get("busy_timeout", 60.0)))
