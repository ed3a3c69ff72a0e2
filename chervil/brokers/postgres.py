"""The PostgreSQL broker: ``FOR UPDATE SKIP LOCKED`` reserves, ``LISTEN/NOTIFY`` wake-ups.

Every verb is one SQL statement on an autocommit connection from a psycopg pool: one
round trip, one implicit transaction (prune loops one statement per batch). Batches
travel as arrays through ``unnest``. Statements live in ``sql/postgres.sql``; the schema
in numbered ``sql/postgres_NNNN_*.sql`` migrations, in its own PostgreSQL schema.

Time: with the system clock every time comes from the server (``statement_timestamp()``),
so a host with a skewed clock can neither start a job early nor steal a valid lease.
With an injected clock (tests), its time is passed instead.

Wake-ups: a trigger NOTIFYs ``chervil_<schema>`` with the queue name whenever jobs become
waiting (enqueue, release, retry, requeue, recover); it fires at commit. ``wait`` blocks
on a listening connection of its own (one per waiting thread), capped at the time until
the next scheduled job, and the caller's timeout is the polling fallback for a lost
notification. Queue stats count live jobs from a partial index and finished jobs from
``terminal_counts``, kept exact by the same trigger, so they never scan finished rows.

Flow control (postgres_0002_flow_control.sql): unique keys live in ``unique_keys`` (who
took the key, in which mode, until when); enqueue row-locks its batch's keys in key order
(``lock_unique``) and then, with a snapshot taken after the locks, skips the jobs whose key
is still held, so concurrent producers of one key get exactly one job. A requeued job whose
key another job has taken since is requeued but does not take the key back (it holds it
again only if the key still names it). Lock keys and rate keys are admitted by a reserve
statement of their own, ``reserve_keys``, when they are the only flow control in force in
the queues asked for (``flow_mode``, postgres_0011_lock_keys_in_reserve.sql): the plain
``reserve`` says when it meets them, and the broker sends ``reserve_keys`` for those queues
until that one meets something else. A lock key's job runs only while it holds the key's
entry in the unique index ``jobs_lock_running`` (the statement tries the key's advisory
lock first, so it never waits for another reserve), and a rate key's tokens are taken from
its ``buckets`` row, locked in key order. A job that statement leaves out (a held key, an
empty bucket) or loses to a concurrent reserve (a unique violation) sends the rest of the
batch to the exact path, ``reserve_flow``, in a second statement. ``reserve_flow`` runs at
once when a task is paused, jobs are parked for a token, or a ready job has another limit
key (postgres_0003_flow_skip_locked.sql); it locks its picks with SKIP LOCKED, so
concurrent reserves take different jobs, then the ``slots`` rows of their keys, the
advisory locks of their lock keys (waiting for a reserve statement that holds one) and the
``buckets`` rows, each in key order, counts running jobs per key from ``jobs`` with a fresh
snapshot, and admits within the free slots and tokens, all in the reserve's own
transaction. Running jobs are counted, not tracked, so finish, release and recover free a
slot by leaving ``running`` and take no lock for it. Jobs of a key that is full, met at the
head of a queue, are parked (``park``), out of the index reserve reads, so a backlog behind
one lock costs reserve nothing; a job leaving ``running`` brings back the first parked job
of its key (a trigger), and a sweep (``unpark_free_keys``, run by recover and by a reserve
that comes back short) brings back any the trigger missed (postgres_0005_parked_jobs.sql).
Jobs of an empty token bucket are parked the same way until their token is due
(``park_due``, one token apart per key); reserve brings back the due ones of its queues
first, and ``next_due`` counts them, so a waiting worker wakes for them
(postgres_0006_parked_rate_jobs.sql).

Round trips per call: enqueue 1 (a plain insert when no job of the batch has a unique,
limit or rate key; two statements pipelined when the batch has unique keys), reserve 1,
finish 1, finish_and_reserve 1 (two statements pipelined, each its own transaction; a
reserve that first meets lock or rate keys alone in its queues, or leaves such a job out,
or loses a race for a key: 1 more),
extend/release 1, recover 2 (the sweep of parked keys, then the expired leases), prune 1
per batch, every other verb 1.
``enqueue(jobs, connection=conn)`` runs on the caller's psycopg connection inside its open
transaction and never commits (in autocommit mode it wraps its statements in one
transaction of their own).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from ..clock import Clock, SystemClock
from ..errors import BrokerUnavailable, ConfigurationError
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
from .deadline import Deadlines
from .postgres_setup import PostgresOptions, migrate, migrate_connection, parse_url
from .sqlfile import load_queries

__all__ = ["PostgresBroker", "from_url", "migrate"]

_NOW = sql.SQL("COALESCE(%(now)s::float8, extract(epoch FROM statement_timestamp())::float8)")
_FILTERS = {"status": sql.SQL("status = %(status)s"), "queue": sql.SQL("queue = %(queue)s"),
            "task": sql.SQL("task = %(task)s"), "before_id": sql.SQL("id < %(before_id)s")}
# Reserve's plan must walk jobs_ready in its order and stop at the LIMIT. When the
# statistics say few jobs wait (a new table, or a burst after a quiet hour: finished rows
# dominate), the planner prefers scanning every waiting job of the queue through another
# index and sorting them: 20 ms instead of 0.3 ms at 20,000 waiting, growing with the
# backlog. So sorting, hash and merge joins are made the last resort, and the plan is the
# generic one, made once per connection: a custom plan cost 0.55 ms of planning on every
# reserve, as long as the rest of the statement ran. (With hash and merge joins allowed,
# the generic plan, which cannot know the LIMIT, scanned the whole table to join the picks
# back to their rows.) Settings for the reserve's transaction only: the pipeline's
# implicit transaction (no BEGIN and COMMIT: inside a pipeline psycopg syncs on each, 0.45
# ms per call measured here), which set_config(..., true) lasts until its one sync. A
# session-wide setting is no good: the cost of what cannot avoid a sort becomes huge, and
# JIT compiles those statements (enqueue slowed by tens of ms).
_RESERVE_PLAN = (b"SELECT set_config('enable_sort', 'off', true), "
                 b"set_config('enable_hashjoin', 'off', true), "
                 b"set_config('enable_mergejoin', 'off', true), "
                 b"set_config('plan_cache_mode', 'force_generic_plan', true)")
_LOST = ErrorInfo("LeaseLost", "the worker holding this job's lease stopped renewing it "
                  "(crashed, killed or hung)").to_json()
# A reserve statement that lost a lock key to a concurrent one (a unique violation on
# jobs_lock_running), or was chosen as a deadlock's victim (a worker not yet upgraded
# finishes and reserves in one transaction): nothing was taken, and the exact path takes
# the batch instead.
_LOST_RACE = (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected)


def _lost_race(exc: psycopg.Error) -> bool:
    return (isinstance(exc, psycopg.errors.DeadlockDetected)
            or exc.diag.constraint_name == "jobs_lock_running")


def _configure(conn: psycopg.Connection[Any]) -> None:
    """Each pooled connection: no JIT compilation. The statements here touch a few rows
    each, but a batch's estimate can pass jit_above_cost: the enqueue of 1,000 jobs with
    lock keys then spent 55 ms of its 80 compiling (the functions set it off themselves;
    an enqueue on the caller's own connection, usually of a few jobs, keeps its setting)."""
    conn.execute("SET jit = off")


def _row_to_job(row: Sequence[Any]) -> Job:
    return job_from_row(row, bytes(row[3]), dict(row[21]) if row[21] else {})


class PostgresBroker(Broker):
    def __init__(self, options: PostgresOptions, clock: Clock | None = None,
                 max_lost_leases: int = 3) -> None:
        self.options = options
        self.clock = clock or SystemClock()
        self.max_lost_leases = max_lost_leases
        self._server_time = isinstance(self.clock, SystemClock)
        self._schema = sql.Identifier(options.schema)
        texts = load_queries("postgres.sql")
        self._list_jobs = texts["list_jobs"]
        # Rendered once: the schema is a quoted identifier, never pasted text.
        self._q = {name: sql.SQL(text).format(s=self._schema, now=_NOW)
                   .as_bytes(None) for name, text in texts.items() if name != "list_jobs"}
        self._lock = threading.Lock()
        self._pool_obj: ConnectionPool | None = None
        self._pid = os.getpid()
        self._listeners: list[psycopg.Connection[Any]] = []  # every LISTENing connection
        self._idle_listeners: list[psycopg.Connection[Any]] = []  # those no thread waits on
        self._deadlines = Deadlines(self.options.call_timeout, "PostgreSQL")
        # queues whose last reserve met lock and rate keys alone: reserve_keys serves them
        self._keyed: set[tuple[str, ...]] = set()

    # -- connections ---------------------------------------------------------------------
    def _pool(self) -> ConnectionPool:
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours to use
            self._pool_obj, self._listeners, self._idle_listeners = None, [], []
            self._pid = os.getpid()
        pool = self._pool_obj
        if pool is not None:
            return pool
        with self._lock:
            if self._pool_obj is None:
                o = self.options
                try:  # a direct first connection reports a bad host or password at once
                    with psycopg.connect(o.conninfo, autocommit=True,
                                         connect_timeout=max(1, int(o.pool_timeout))) as conn:
                        migrate_connection(conn, o.schema)
                except psycopg.OperationalError as exc:
                    raise BrokerUnavailable(f"PostgreSQL unreachable ({exc})") from exc
                pool = ConnectionPool(o.conninfo, min_size=o.pool_min, max_size=o.pool_max,
                                      timeout=o.pool_timeout, kwargs={"autocommit": True},
                                      configure=_configure, name=f"chervil-{o.schema}",
                                      open=False)
                pool.open(wait=False)
                self._pool_obj = pool
            return self._pool_obj

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool().connection() as conn, self._deadlines.guard(conn.fileno()):
                yield conn
        except PoolTimeout as exc:
            raise BrokerUnavailable(
                f"no PostgreSQL connection within {self.options.pool_timeout:.0f} s "
                f"({exc}); is the server up and reachable?") from exc
        except psycopg.OperationalError as exc:
            raise BrokerUnavailable(
                f"PostgreSQL connection failed ({exc}); a write in flight may or may not "
                "have committed: retrying it is safe (every verb is idempotent or fenced)"
            ) from exc

    def _params(self, **params: Any) -> dict[str, Any]:
        params["now"] = None if self._server_time else self.clock.now()
        return params

    def _rows(self, name: str, /, **params: Any) -> list[Any]:
        with self._conn() as conn:
            return conn.execute(self._q[name], self._params(**params)).fetchall()

    def _count(self, name: str, /, **params: Any) -> int:
        with self._conn() as conn:
            return conn.execute(self._q[name], self._params(**params)).rowcount

    # -- producing -----------------------------------------------------------------------
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Enqueued]:
        if connection is not None and not isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                "the PostgreSQL broker enqueues inside a psycopg (3) Connection to the same "
                f"database; got {type(connection).__name__}")
        if not jobs:
            return []
        # Repeats inside the batch resolve to their first occurrence, client side.
        send: list[NewJob] = []
        first: dict[int, int] = {}  # index in jobs -> index in send
        by_id: dict[str, int] = {}
        by_key: dict[str, int] = {}
        origin: list[int] = []  # index in send -> index in jobs
        for i, j in enumerate(jobs):
            rep = by_id.get(j.id)
            if rep is None and j.unique_key is not None:
                rep = by_key.get(j.unique_key)
            if rep is None:
                rep = len(send)
                send.append(j)
                origin.append(i)
                by_id[j.id] = rep
                if j.unique_key is not None:
                    by_key[j.unique_key] = rep
            first[i] = rep
        params = self._params(
            ids=[j.id for j in send], tasks=[j.task for j in send],
            queues=[j.queue for j in send], priorities=[j.priority for j in send],
            payloads=[j.payload for j in send], max_attempts=[j.max_attempts for j in send],
            run_ats=[j.run_at for j in send], versions=[j.task_version for j in send],
            traces=[json.dumps(j.trace) if j.trace else None for j in send])
        if not all(j.unique_key is None and j.limit_key is None and j.rate_key is None
                   for j in send):
            params.update(self._flow_params(send))
        if connection is not None:
            self._pool()  # the schema exists before the caller's transaction uses it
            if connection.autocommit:  # the key locks must last until the jobs commit
                with connection.transaction():
                    results = self._enqueue_on(connection, send, params)
            else:
                results = self._enqueue_on(connection, send, params)
        else:  # one statement, or two in one pipeline (and its implicit transaction)
            with self._conn() as conn:
                results = self._enqueue_on(conn, send, params)
        out = []
        for i in range(len(jobs)):
            rep = first[i]
            res = results[rep]
            out.append(res if origin[rep] == i else Enqueued(res.id, duplicate=True))
        return out

    @staticmethod
    def _flow_params(send: list[NewJob]) -> dict[str, Any]:
        """The arrays of unique, limit and rate keys (the plain enqueue needs none)."""
        return {
            "unique_keys": [j.unique_key for j in send],
            "unique_modes": [j.unique_mode for j in send],
            "unique_untils": [j.unique_until for j in send],
            "limit_keys": [j.limit_key for j in send],
            "limit_ns": [j.limit_n if j.limit_key is not None else None for j in send],
            "rate_keys": [j.rate_key for j in send],
            "rates": [float(j.rate_per_second) if j.rate_key is not None else None
                   for j in send],
            "bursts": [float(j.rate_burst) if j.rate_key is not None else None for j in send]}

    def _enqueue_on(self, conn: psycopg.Connection[Any], send: list[NewJob],
                    params: dict[str, Any]) -> list[Enqueued]:
        cur = conn.cursor(row_factory=tuple_row)  # the caller's connection may use another
        if "unique_keys" not in params:  # no unique, limit or rate key in the batch
            cur.execute(self._q["enqueue_plain"], params)
            added = {r[0] for r in cur.fetchall()}
            return [Enqueued(j.id, duplicate=j.id not in added) for j in send]
        if any(j.unique_key is not None for j in send):
            # Two statements, one round trip: lock the keys, then enqueue with a snapshot
            # taken after the locks (see lock_unique in postgres.sql). On the broker's own
            # (autocommit) connection they share the pipeline's implicit transaction, which
            # holds the key locks until its one sync: no BEGIN or COMMIT, each of which
            # would cost psycopg a wait inside the pipeline.
            with conn.pipeline():
                conn.cursor().execute(self._q["lock_unique"], params)
                cur.execute(self._q["enqueue"], params)
        else:
            cur.execute(self._q["enqueue"], params)
        rows = cur.fetchall()
        results = []
        for job_id, added, _id_taken, holder in rows:
            if added:
                results.append(Enqueued(job_id))
            elif holder is not None and not _id_taken:
                results.append(Enqueued(holder, duplicate=True))
            else:
                # The id exists: seen, or committed by a concurrent enqueue of the same id
                # while this one waited (ON CONFLICT skipped it).
                results.append(Enqueued(job_id, duplicate=True))
        return results

    # -- consuming -----------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], limit: int, worker: str,
                lease_seconds: float) -> list[Job]:
        if limit <= 0 or not queues:
            return []
        with self._conn() as conn:
            _, rows = self._send_reserve(
                conn, self._reserve_statement(queues, limit, worker, lease_seconds))
            return self._reserve_rest(conn, rows, queues, limit, worker, lease_seconds)

    def _send_reserve(self, conn: psycopg.Connection[Any], statement: tuple[bytes, Any],
                      finish: dict[str, Any] | None = None
                      ) -> tuple[list[Any], list[Any] | None]:
        """One pipeline, one round trip: the finish first when there is one, committed in a
        transaction of its own, then the reserve statement with the plan settings of its
        transaction. Returns the finish's rows and the reserve's, or None for the reserve's
        when it lost a race for a lock key (see _LOST_RACE): it took nothing."""
        fcur = conn.cursor() if finish is not None else None
        rcur = conn.cursor(binary=True)  # rows in binary: no text to parse
        try:
            with conn.pipeline():
                if fcur is not None:
                    conn.execute(b"BEGIN")
                    fcur.execute(self._q["finish"], finish)
                    conn.execute(b"COMMIT")
                conn.execute(_RESERVE_PLAN)
                rcur.execute(*statement)
        except _LOST_RACE as exc:
            if not _lost_race(exc):
                raise
            rows = None
        else:
            rows = rcur.fetchall()
        return (fcur.fetchall() if fcur is not None else []), rows

    def _reserve_statement(self, queues: Sequence[str], limit: int, worker: str,
                           lease_seconds: float, exact: bool = False) -> tuple[bytes,
                                                                              dict[str, Any]]:
        """reserve, or reserve_keys for queues whose last reserve met lock and rate keys
        alone (``exact``: reserve_keys sending the batch to reserve_flow)."""
        keys = exact or tuple(queues) in self._keyed
        return (self._q["reserve_keys" if keys else "reserve"],
                self._reserve_params(queues, limit, worker, lease_seconds, fast=not exact))

    def _reserve_rest(self, conn: psycopg.Connection[Any], rows: list[Any] | None,
                      queues: Sequence[str], limit: int, worker: str,
                      lease_seconds: float) -> list[Job]:
        """The jobs of a reserve statement, and what its last row (with no id) asks for:
        'keys', reserve_keys for the batch; 'exact', reserve_flow for the rest of it (a job
        of a lock or rate key left out); 'plain', reserve next time. ``rows`` is None when
        reserve_keys lost a race for a lock key: it took nothing, and reserve_flow takes the
        batch."""
        taken: list[Any] = []
        for step in range(3):  # reserve, then reserve_keys, then reserve_flow at most
            then = "exact" if rows is None else None
            for r in rows or ():
                if r[0] is not None:
                    taken.append(r)
                else:
                    then = r[4]
            if then == "plain":
                self._keyed.discard(tuple(queues))
            elif then == "keys":
                self._keyed.add(tuple(queues))
            if then not in ("keys", "exact") or len(taken) >= limit or step == 2:
                break
            _, rows = self._send_reserve(conn, self._reserve_statement(
                queues, limit - len(taken), worker, lease_seconds, exact=then == "exact"))
        return self._reserved(taken, queues)

    def _reserve_params(self, queues: Sequence[str], limit: int, worker: str,
                        lease_seconds: float, fast: bool = True) -> dict[str, Any]:
        return self._params(queues=list(queues), limit=limit, worker=worker,
                            lease=float(lease_seconds), token=uuid.uuid4().hex, fast=fast,
                            schema=self.options.schema)

    @staticmethod
    def _reserved(rows: list[Any], queues: Sequence[str]) -> list[Job]:
        # RETURNING gives rows in no promised order: restore the reserve order.
        jobs = [_row_to_job(r) for r in rows]
        order = {q: i for i, q in enumerate(queues)}
        jobs.sort(key=lambda j: (order[j.queue], -j.priority, j.run_at, j.id))
        return jobs

    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        if not leases:
            return []
        held = {r[0] for r in self._rows("extend", ids=[x.job_id for x in leases],
                                         tokens=[x.token for x in leases],
                                         lease=float(lease_seconds))}
        return [x.job_id for x in leases if x.job_id not in held]

    def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        if not outcomes:
            return []
        return self._finished(outcomes, self._rows("finish", **self._finish_params(outcomes)))

    def finish_and_reserve(self, outcomes: Sequence[Outcome], queues: Sequence[str],
                           limit: int, worker: str, lease_seconds: float
                           ) -> tuple[list[bool], list[Job]]:
        """Both statements in one pipeline, one round trip, each in a transaction of its
        own: the reserve may wait on the unique index for the transaction that finishes a
        job of the same lock key, and that transaction must not be one that waits on it."""
        if not outcomes:
            return [], self.reserve(queues, limit, worker, lease_seconds)
        if limit <= 0 or not queues:
            return self.finish(outcomes), []
        fparams = self._params(**self._finish_params(outcomes))
        rstatement = self._reserve_statement(queues, limit, worker, lease_seconds)
        with self._conn() as conn:
            done, rows = self._send_reserve(conn, rstatement, finish=fparams)
            return (self._finished(outcomes, done),
                    self._reserve_rest(conn, rows, queues, limit, worker, lease_seconds))

    @staticmethod
    def _finish_params(outcomes: Sequence[Outcome]) -> dict[str, Any]:
        """The batch as one JSON array of rows: one parameter that psycopg sends as it is,
        where seven arrays cost the fetcher about 7 us per job to adapt, element by element."""
        for o in outcomes:
            if o.status not in (JobStatus.SUCCEEDED, JobStatus.SCHEDULED, JobStatus.DEAD):
                raise ValueError(f"an outcome cannot have status {o.status}")
        # One row per job: a second outcome for the same job in a batch is stale.
        once = {o.job_id: o for o in reversed(outcomes)}.values()
        return {"outcomes": json.dumps(
            [[o.job_id, o.lease_token, o.status.value, o.retry_at, o.dead_reason,
              o.error.to_json() if o.error else None, o.result] for o in once],
            separators=(",", ":")), "n": len(once)}

    @staticmethod
    def _finished(outcomes: Sequence[Outcome], rows: list[Any]) -> list[bool]:
        accepted = {r[0] for r in rows}
        out = []
        for o in outcomes:
            out.append(o.job_id in accepted)
            accepted.discard(o.job_id)
        return out

    def release(self, leases: Sequence[Lease], delay: float = 0.0) -> int:
        if not leases:
            return 0
        return len(self._rows("release", ids=[x.job_id for x in leases],
                              tokens=[x.token for x in leases], delay=float(delay)))

    def recover(self, leases: Sequence[Lease] | None = None) -> int:
        if leases is None:
            # and jobs parked behind a limit key whose slot freed unseen come back
            self._rows("unpark", keys=10_000)
            return len(self._rows("recover_expired", limit=self.max_lost_leases, error=_LOST))
        if not leases:
            return 0
        return len(self._rows("recover_given", ids=[x.job_id for x in leases],
                              tokens=[x.token for x in leases], limit=self.max_lost_leases,
                              error=_LOST))

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        conn = self._listener()
        try:
            self._wait_on(conn, queues, timeout)
        except psycopg.OperationalError as exc:
            self._drop_listener(conn)
            raise BrokerUnavailable(f"PostgreSQL listening connection lost ({exc})") from exc
        except BaseException:
            self._drop_listener(conn)  # interrupted mid-read: not fit for the next waiter
            raise
        with self._lock:
            self._idle_listeners.append(conn)

    def _wait_on(self, conn: psycopg.Connection[Any], queues: Sequence[str],
                 timeout: float) -> None:
        wanted = set(queues)
        row = conn.execute(self._q["next_due"], self._params(queues=list(queues))).fetchone()
        if row and row[0] is not None:
            timeout = min(timeout, max(0.0, float(row[0])))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            woken = False
            for note in conn.notifies(timeout=remaining, stop_after=1):
                woken = woken or not note.payload or note.payload in wanted
            if woken:
                return

    def _listener(self) -> psycopg.Connection[Any]:
        """A LISTENing connection no other thread is waiting on.

        Shared by the threads in turn rather than one per thread: a worker's fetcher role
        moves between its executor threads, and with a connection per thread a child kept up
        to one per thread, each of whose server processes was woken by every NOTIFY (one per
        finish of limit-key jobs).
        """
        self._pool()
        with self._lock:
            while self._idle_listeners:
                conn = self._idle_listeners.pop()
                if not conn.closed:
                    return conn
        try:
            conn = psycopg.connect(self.options.conninfo, autocommit=True,
                                   connect_timeout=max(1, int(self.options.pool_timeout)))
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.options.channel)))
        except psycopg.OperationalError as exc:
            raise BrokerUnavailable(f"PostgreSQL unreachable for LISTEN ({exc})") from exc
        with self._lock:
            self._listeners.append(conn)
        return conn

    def _drop_listener(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if conn in self._listeners:
                self._listeners.remove(conn)
        conn.close()

    # -- operating -----------------------------------------------------------------------
    def requeue(self, ids: Sequence[str]) -> int:
        return self._count("requeue", ids=list(ids)) if ids else 0

    def requeue_dead(self, queue: str | None = None, task: str | None = None) -> int:
        return self._count("requeue_dead", queue=queue, task=task)

    def cancel(self, ids: Sequence[str]) -> int:
        return self._count("cancel", ids=list(ids)) if ids else 0

    def purge(self, queue: str) -> int:
        return self._count("purge", queue=queue)

    def set_paused(self, queue: str, paused: bool) -> None:
        self._rows("set_paused", queue=queue, paused=paused, channel=self.options.channel)

    def prune(self, succeeded_before: float, dead_before: float, batch: int = 1000) -> int:
        total = 0
        for name, before in (("prune_succeeded", succeeded_before),
                             ("prune_failed", dead_before)):
            while True:  # one short transaction per batch: no long locks
                n = self._count(name, before=before, batch=batch)
                total += n
                if n < batch:
                    break
        while int(self._rows("prune_keys", batch=batch)[0][0]) >= batch:
            pass  # flow-control rows no job needs any more, in batches as well
        return total

    # -- inspecting ----------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        rows = self._rows("get", id=job_id)
        return _row_to_job(rows[0]) if rows else None

    def list_jobs(self, filter: JobFilter, limit: int = 100,
                  before_id: str | None = None) -> list[Job]:
        params: dict[str, Any] = {
            "status": filter.status.value if filter.status else None,
            "queue": filter.queue, "task": filter.task, "before_id": before_id}
        conds = [_FILTERS[k] for k, v in params.items() if v is not None]
        where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
        query = sql.SQL(self._list_jobs).format(s=self._schema, now=_NOW, where=where)
        with self._conn() as conn:
            rows = conn.execute(query, self._params(limit=limit, **params)).fetchall()
        return [_row_to_job(r) for r in rows]

    def queue_stats(self) -> list[QueueStats]:
        counts: dict[str, dict[str, int]] = {}
        age: dict[str, float] = {}
        paused: dict[str, bool] = {}
        for kind, queue, status, value in self._rows("queue_stats"):
            if kind == "count":
                counts.setdefault(queue, {})[status] = int(value)
            elif kind == "age":
                age[queue] = float(value)
            else:
                paused[queue] = bool(value)
        names = sorted(set(counts) | set(paused))
        return [QueueStats(q, counts.get(q, {}), age.get(q), paused.get(q, False))
                for q in names]

    # -- flow control and scheduling ------------------------------------------------------
    def set_task_paused(self, task: str, paused: bool) -> None:
        if paused:
            self._count("pause_task", task=task)
        else:
            self._rows("resume_task", task=task, channel=self.options.channel)

    def paused_tasks(self) -> list[str]:
        return [r[0] for r in self._rows("paused_tasks")]

    def schedule_marks(self) -> dict[str, float]:
        return {r[0]: float(r[1]) for r in self._rows("schedule_marks")}

    def mark_schedule(self, name: str, fire_at: float) -> None:
        self._count("mark_schedule", name=name, fire_at=float(fire_at))

    # -- workers and coordination --------------------------------------------------------
    def register_worker(self, info: WorkerInfo) -> None:
        self._count("upsert_worker", id=info.id, info=json.dumps(info.to_dict()))

    def unregister_worker(self, worker_id: str) -> None:
        self._count("delete_worker", id=worker_id)

    def workers(self, seen_within: float = 60.0) -> list[WorkerInfo]:
        rows = self._rows("live_workers", within=float(seen_within))
        return [WorkerInfo.from_dict(r[0]) for r in rows]

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        return bool(self._rows("acquire_lease", name=name, owner=owner, ttl=float(ttl)))

    def release_lease(self, name: str, owner: str) -> None:
        self._count("release_lease", name=name, owner=owner)

    def close(self) -> None:
        with self._lock:
            pool, self._pool_obj = self._pool_obj, None
            listeners, self._listeners, self._idle_listeners = self._listeners, [], []
        for conn in listeners:
            conn.close()
        if pool is not None:
            pool.close()


def from_url(url: str, clock: Clock | None = None) -> PostgresBroker:
    """``postgresql://host/db?schema=chervil``; see postgres_setup for the options."""
    return PostgresBroker(parse_url(url), clock=clock)
