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

import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..clock import Clock, SystemClock
from ..errors import BrokerUnavailable, ConfigurationError
from ..job import ErrorInfo, Job, JobStatus
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
from .sqlfile import load_queries, migrations
from .wake import Waiter, Waker, wake_dir

Q = load_queries("sqlite.sql")
T = TypeVar("T")
_SYNC_MODES = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}


def _row_to_job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0], task=row[1], queue=row[2], payload=bytes(row[3]) if row[3] is not None
        else b"", status=JobStatus(row[4]), priority=row[5], attempts=row[6],
        max_attempts=row[7], lost_leases=row[8], last_error=ErrorInfo.from_json(row[9]),
        dead_reason=row[10], created_at=row[11], run_at=row[12], started_at=row[13],
        finished_at=row[14], worker=row[15], lease_until=row[16], lease_token=row[17],
        unique_key=row[18], task_version=row[19], result=row[20],
        trace=json.loads(row[21]) if row[21] else {}, limit_key=row[22], rate_key=row[23],
    )


def _statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (trigger bodies stay whole)."""
    out, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") for ln in buf.strip().splitlines()):
        out.append(buf.strip())
    return out


def _admit(conn: sqlite3.Connection, queue: str, want: int, now: float) -> list[str]:
    """Pick up to ``want`` ready ids of ``queue`` that flow control lets run now.

    Candidates come from SQL already past saturated keys and empty buckets; here the
    batch itself is kept within each key's free slots and tokens, and the tokens taken
    are written back.
    """
    ids: list[str] = []
    free: dict[str, int] = {}
    buckets: dict[str, list[float]] = {}  # key -> [tokens, rate, burst]
    rows = conn.execute(Q["reserve_candidates"], (queue, now, want * 4 + 16)).fetchall()
    for job_id, limit_key, limit_n, rate_key, rate, burst in rows:
        if limit_key is not None:
            if limit_key not in free:
                slot = conn.execute(Q["slots"], (limit_key,)).fetchone()
                free[limit_key] = limit_n - (slot[0] if slot else 0)
            if free[limit_key] <= 0:
                continue
        if rate_key is not None:
            if rate_key not in buckets:
                b = conn.execute(Q["bucket"], (rate_key,)).fetchone()
                tokens = burst if b is None else min(burst, b[0] + (now - b[1]) * rate)
                buckets[rate_key] = [tokens, rate, burst]
            if buckets[rate_key][0] < 1:
                continue
            buckets[rate_key][0] -= 1
        if limit_key is not None:
            free[limit_key] -= 1
        ids.append(job_id)
        if len(ids) >= want:
            break
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
        self.synchronous = _SYNC_MODES[synchronous.lower()]
        self.busy_timeout = busy_timeout
        self.max_lost_leases = max_lost_leases
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock_fds: list[int] = []
        self._conns_lock = threading.Lock()
        self._wake_dir = wake_dir(path)
        self._waker = Waker(self._wake_dir)
        self._migrated = False

    # -- connections and transactions ----------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
            if not self._migrated:
                self._migrate(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        def run() -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                for number, script in migrations("sqlite"):
                    if number > version:
                        for statement in _statements(script):
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._retry(run)
        self._migrated = True

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying while the database is busy, up to ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                msg = str(exc)
                if "locked" not in msg and "busy" not in msg:
                    raise
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"SQLite file {self.path} stayed locked for {self.busy_timeout:.0f} s; "
                        "is another program holding a long write transaction?") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        lock_fd = self._lock_fd()

        def run() -> T:
            # Writers of this file on this host queue on a lock file first: the kernel
            # wakes the next one the moment the lock is free, where SQLite's own busy
            # handler would sleep in steps of up to 100 ms.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return out
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        return self._retry(run)

    def _lock_fd(self) -> int:
        fd: int | None = getattr(self._local, "lock_fd", None)
        if fd is None:
            fd = os.open(self.path + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
            self._local.lock_fd = fd
            with self._conns_lock:
                self._lock_fds.append(fd)
        return fd

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self._conn()
        return self._retry(lambda: conn.execute(sql, params).fetchall())

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
        result = self._write(tx)
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
        accepted, jobs = self._write(tx)
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
        return self._write(tx)

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
        n = self._write(tx)
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
        n = self._write(tx)
        if n:
            self._waker.notify()
        return n

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        waiter: Waiter | None = getattr(self._local, "waiter", None)
        if waiter is None:
            waiter = self._local.waiter = Waiter(self._wake_dir)
        row = self._read(Q["next_due"])
        if row and row[0][0] is not None:
            timeout = min(timeout, max(0.0, row[0][0] - self.clock.now()))
        if timeout > 0:
            waiter.wait(timeout)

    # -- operating -----------------------------------------------------------------------
    def requeue(self, ids: Sequence[str]) -> int:
        now = self.clock.now()
        n = self._write(lambda c: sum(c.execute(Q["requeue"], (now, i)).rowcount for i in ids))
        self._waker.notify()
        return n

    def requeue_dead(self, queue: str | None = None, task: str | None = None) -> int:
        now = self.clock.now()
        n = self._write(lambda c: c.execute(Q["requeue_dead"],
                                            (now, queue, queue, task, task)).rowcount)
        self._waker.notify()
        return n

    def cancel(self, ids: Sequence[str]) -> int:
        now = self.clock.now()
        return self._write(lambda c: sum(c.execute(Q["cancel"], (now, i)).rowcount
                                         for i in ids))

    def purge(self, queue: str) -> int:
        now = self.clock.now()
        return self._write(lambda c: c.execute(Q["purge"], (now, queue)).rowcount)

    def set_paused(self, queue: str, paused: bool) -> None:
        self._write(lambda c: c.execute(Q["set_paused"], (queue, int(paused))))
        if not paused:
            self._waker.notify()

    def prune(self, succeeded_before: float, dead_before: float, batch: int = 1000) -> int:
        total = 0
        while True:
            n = self._write(lambda c: c.execute(Q["prune"], (succeeded_before, dead_before,
                                                             batch)).rowcount)
            total += n
            if n < batch:
                return total

    # -- inspecting ----------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        rows = self._read(Q["get"], (job_id,))
        return _row_to_job(rows[0]) if rows else None

    def list_jobs(self, filter: JobFilter, limit: int = 100,
                  before_id: str | None = None) -> list[Job]:
        status = filter.status.value if filter.status else None
        rows = self._read(Q["list_jobs"], (status, filter.queue, filter.task, before_id, limit))
        return [_row_to_job(r) for r in rows]

    def queue_stats(self) -> list[QueueStats]:
        now = self.clock.now()
        counts: dict[str, dict[str, int]] = {}
        for queue, status, n in self._read(Q["count_by_status"]):
            counts.setdefault(queue, {})[status] = n
        oldest = dict(self._read(Q["oldest_ready"]))
        paused = {name: bool(p) for name, p in self._read(Q["all_queues"])}
        names = sorted(set(counts) | set(paused))
        return [QueueStats(q, counts.get(q, {}),
                           max(0.0, now - oldest[q]) if q in oldest else None,
                           paused.get(q, False)) for q in names]

    # -- flow control and scheduling ------------------------------------------------------
    def set_task_paused(self, task: str, paused: bool) -> None:
        self._write(lambda c: c.execute(Q["pause_task" if paused else "resume_task"], (task,)))
        if not paused:
            self._waker.notify()

    def paused_tasks(self) -> list[str]:
        return [r[0] for r in self._read(Q["paused_tasks"])]

    def schedule_marks(self) -> dict[str, float]:
        return dict(self._read(Q["schedule_marks"]))

    def mark_schedule(self, name: str, fire_at: float) -> None:
        self._write(lambda c: c.execute(Q["mark_schedule"], (name, fire_at)))

    # -- workers and coordination --------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        now = self.clock.now()
        data = json.dumps({**info.to_dict(), "seen_at": now})
        self._write(lambda c: c.execute(Q["upsert_worker"], (info.id, data, now)))

    def unregister_worker(self, worker_id: str) -> None:
        self._write(lambda c: c.execute(Q["delete_worker"], (worker_id,)))

    def workers(self, seen_within: float = 60.0) -> list[WorkerInfo]:
        rows = self._read(Q["live_workers"], (self.clock.now() - seen_within,))
        return [WorkerInfo.from_dict(json.loads(info)) for info, _ in rows]

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        now = self.clock.now()
        return bool(self._write(lambda c: c.execute(
            Q["acquire_lease"], (name, owner, now + ttl, now)).rowcount))

    def release_lease(self, name: str, owner: str) -> None:
        self._write(lambda c: c.execute(Q["release_lease"], (name, owner)))

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
            for fd in self._lock_fds:
                os.close(fd)
            self._lock_fds.clear()
        waiter: Waiter | None = getattr(self._local, "waiter", None)
        if waiter is not None:
            waiter.close()
            self._local.waiter = None
        self._local = threading.local()
        self._waker.close()
        self._migrated = False


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
