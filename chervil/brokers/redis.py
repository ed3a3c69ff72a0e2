"""The Redis broker: every state change is one Lua script, every batch one round trip.

URLs (``chervil[redis]``)::

    redis://[user:password@]host:6379/0     TCP, database 0
    rediss://[user:password@]host:6380/0    TLS (options ssl_ca_certs=, ssl_cert_reqs=)
    unix:///run/redis.sock?db=0             Unix socket
    redis://host:7000?cluster=true          Redis Cluster (any node as the entry point)

Options (query string): ``prefix`` (default ``chervil``; two apps can share one Redis),
``enqueue_timeout`` (s, default 10: enqueue retries a lost Redis this long, then raises
BrokerUnavailable), ``timeout`` (s, default 10, the same for the other verbs),
``succeeded_ttl`` / ``dead_ttl`` (s, default 7 and 30 days; Redis expires finished
records by itself, 0 = keep until pruned), ``allow_eviction=true`` (accept a
``maxmemory-policy`` other than ``noeviction``, which is refused otherwise because Redis
would delete jobs), ``allow_no_password=true`` (accept a non-local Redis without a
password), ``cluster=true``. Unknown options are refused.

Data model (``lua/_lib.lua`` has the full key list): one hash per job and, per queue,
sorted sets for ready (priority, run_at, id), scheduled (run_at), running (lease_until),
finished (finished_at) and per-status id indexes (ZRANGEBYLEX paging), so reserve,
finish, recover and stats cost O(log n) whatever the backlog; no KEYS or SCAN anywhere.
All keys of a queue share the hash tag ``{queue}``, so on Redis Cluster every script
touches one slot. Jobs are found by id through their lease token (``<hex>:<queue>``) on
the hot path; ``get``, ``requeue`` and ``cancel`` by id look in each known queue, which
costs O(number of queues). Unique keys are unique per queue.

Time: with a FakeClock (tests) the scripts use it; with the system clock they read
Redis's own TIME, so a host with a skewed clock can neither start jobs early nor steal
leases. Wake-ups: enqueue, release, requeue, recover and resume push tokens to a
per-queue list (``<prefix>:{_}:wake:<queue>``, at most 16 tokens) that ``wait`` blocks
on with BLPOP, capped at the next scheduled job's time; a reserve that fills its batch
while ready jobs remain passes a token on, so no wake-up is lost for other workers.

Atomicity limits: an enqueue batch is one script up to 2,000 jobs (larger batches are
several scripts in one round trip); on Redis Cluster it is one script per queue.
Durability is Redis's: use ``appendonly yes`` (``appendfsync always`` for no loss).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisClusterException, TryAgainError

from ..clock import Clock, SystemClock
from ..errors import BrokerUnavailable, ConfigurationError
from ..job import ErrorInfo, Job, JobStatus
from .base import Broker, Enqueued, JobFilter, Lease, NewJob, Outcome, QueueStats, WorkerInfo
from .redis_conn import MAX_BLOCK, RedisOptions, check_server, make_client, parse_url
from .redis_scripts import STATUSES, Scripts, decode_job

log = logging.getLogger("chervil.brokers.redis")
T = TypeVar("T")
WAKE_CAP = 16  # tokens a wake list holds at most
CHUNK = 2000  # jobs per enqueue script; ids per requeue/cancel script
BATCH = 1000  # records per recover / purge / prune script call
_RETRY = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError,
          ReadOnlyError, RedisClusterException)
_KIND = {JobStatus.SUCCEEDED: "s", JobStatus.SCHEDULED: "r", JobStatus.DEAD: "d"}
Call = tuple[str, list[str], list[Any]]


def _queue_of(token: str) -> str | None:
    """The queue a lease token was issued for (tokens are ``<32 hex>:<queue>``)."""
    return token[33:] if len(token) > 33 and token[32] == ":" else None


def _group(items: Iterable[T], token: Callable[[T], str]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = {}
    for item in items:
        queue = _queue_of(token(item))
        if queue is not None:
            groups.setdefault(queue, []).append(item)
    return groups


class RedisBroker(Broker):
    def __init__(self, options: RedisOptions, clock: Clock | None = None) -> None:
        self.options = options
        self.clock = clock or SystemClock()
        self._server_time = isinstance(self.clock, SystemClock)
        self._cluster = options.cluster
        self._r = make_client(options)
        self._blocking = make_client(options, socket_timeout=MAX_BLOCK + 10)
        self._scripts = Scripts()
        self._lock = threading.Lock()
        self._ready = False
        self._registered: set[str] = set()  # queues this process added to the queue set
        self._queues: list[str] = []  # last known queue names
        p = options.prefix
        self._g = f"{p}:{{_}}"

    # -- keys, time, retries ----------------------------------------------------------
    def _base(self, queue: str) -> str:
        return f"{self.options.prefix}:{{{queue}}}"

    def _wake_key(self, queue: str) -> str:
        return f"{self._g}:wake:{queue}"

    def _now(self) -> str:
        """The time argument of a script: empty means "read Redis TIME"."""
        return "" if self._server_time else repr(self.clock.now())

    def _run(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn``, reconnecting with backoff until ``timeout``; map driver errors."""
        limit = self.options.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.02
        while True:
            try:
                if not self._ready:
                    self._connect()
                return fn()
            except _RETRY as exc:
                if time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(
                        f"Redis at {self.options.where} did not answer within {limit:g} s "
                        f"({type(exc).__name__}: {exc})") from exc
                log.debug("Redis unavailable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except redis.RedisError as exc:
                raise BrokerUnavailable(f"Redis at {self.options.where} refused a command "
                                        f"({type(exc).__name__}: {exc})") from exc

    def _connect(self) -> None:
        with self._lock:
            if not self._ready:
                check_server(self._r, self.options)
                self._scripts.load(self._r)
                self._ready = True

    def _calls(self, name: str, queues: Sequence[str], head: Sequence[Any],
               per_queue: dict[str, list[Any]] | None = None, tail: Sequence[Any] = (),
               now: str | None = None) -> tuple[list[list[str]], list[Call]]:
        """One call with every queue (standalone), or one per queue (cluster: one slot)."""
        now = self._now() if now is None else now
        groups = [[q] for q in queues] if self._cluster else [list(queues)]
        calls: list[Call] = []
        for g in groups:
            keys = [self._base(q) for q in g]
            if not self._cluster:
                keys += [self._wake_key(q) for q in g]
            args: list[Any] = [now, len(g), *head]
            for q in g:
                args += per_queue[q] if per_queue else []
            calls.append((name, keys, [*args, *tail]))
        return groups, calls

    def _script(self, name: str, queues: Sequence[str], head: Sequence[Any],
                per_queue: dict[str, list[Any]] | None = None,
                tail: Sequence[Any] = ()) -> list[tuple[list[str], Any]]:
        groups, calls = self._calls(name, queues, head, per_queue, tail)
        return list(zip(groups, self._scripts.run(self._r, calls), strict=True))

    def _wake(self, queues: Sequence[str], counts: Sequence[Any]) -> None:
        """Cluster mode: push the wake tokens a script could not (another slot)."""
        todo = [(q, int(n)) for q, n in zip(queues, counts, strict=True) if int(n) > 0]
        if not self._cluster or not todo:
            return
        try:
            pipe = self._r.pipeline(transaction=False)
            for q, n in todo:
                pipe.lpush(self._wake_key(q), *["1"] * min(n, WAKE_CAP))
                pipe.ltrim(self._wake_key(q), 0, WAKE_CAP - 1)
            pipe.execute()
        except redis.RedisError as exc:  # a lost wake-up only delays a job
            log.debug("wake-up push failed: %s", exc)

    def _register(self, queues: Iterable[str]) -> None:
        new = [q for q in queues if q not in self._registered]
        if new:
            self._r.sadd(f"{self._g}:queues", *new)
            self._registered.update(new)

    def _all_queues(self) -> list[str]:
        self._queues = sorted(q.decode() for q in self._r.smembers(f"{self._g}:queues"))
        return self._queues

    # -- producing --------------------------------------------------------------------
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Enqueued]:
        if connection is not None:
            raise ConfigurationError("the Redis broker has no transaction to join: enqueue "
                                     "without connection= (or use the PostgreSQL broker)")
        if not jobs:
            return []
        spans = [list(range(i, min(i + CHUNK, len(jobs)))) for i in range(0, len(jobs), CHUNK)]
        attempts = [0]

        def go() -> list[Enqueued]:
            attempts[0] += 1
            self._register({j.queue for j in jobs})
            now = self._now()
            calls: list[Call] = []
            orders: list[list[int]] = []
            all_groups: list[list[str]] = []
            for span in spans:
                by_queue: dict[str, list[int]] = {}
                for i in span:
                    by_queue.setdefault(jobs[i].queue, []).append(i)
                args = {q: [q, len(ix), *[a for i in ix for a in _job_args(jobs[i])]]
                        for q, ix in by_queue.items()}
                groups, cs = self._calls("enqueue", list(by_queue), [WAKE_CAP], args, now=now)
                calls += cs
                orders += [[i for q in g for i in by_queue[q]] for g in groups]
                all_groups += groups
            out: list[Enqueued | None] = [None] * len(jobs)
            for k, res in enumerate(self._scripts.run(self._r, calls)):
                flat, wakes = res
                for n, i in enumerate(orders[k]):
                    jid, dup = flat[2 * n].decode(), bool(flat[2 * n + 1])
                    # a retry after a lost reply finds the job it wrote itself
                    if dup and attempts[0] > 1 and jid == jobs[i].id:
                        dup = False
                    out[i] = Enqueued(jid, dup)
                self._wake(all_groups[k], wakes)
            return [e for e in out if e is not None]

        return self._run(go, self.options.enqueue_timeout)

    # -- consuming --------------------------------------------------------------------
    def reserve(self, queues: Sequence[str], limit: int, worker: str,
                lease_seconds: float) -> list[Job]:
        return self.finish_and_reserve((), queues, limit, worker, lease_seconds)[1]

    def finish(self, outcomes: Sequence[Outcome]) -> list[bool]:
        return self.finish_and_reserve(outcomes, (), 0, "", 0.0)[0]

    def finish_and_reserve(self, outcomes: Sequence[Outcome], queues: Sequence[str],
                           limit: int, worker: str, lease_seconds: float
                           ) -> tuple[list[bool], list[Job]]:
        """Both in one round trip (standalone): the finish scripts, then the reserve."""
        for o in outcomes:
            if o.status not in _KIND:
                raise ValueError(f"an outcome cannot have status {o.status}")
        queues = list(dict.fromkeys(queues))
        if not outcomes and (limit <= 0 or not queues):
            return [], []
        return self._run(lambda: self._finish_reserve(outcomes, queues, limit, worker,
                                                      lease_seconds))

    def _finish_reserve(self, outcomes: Sequence[Outcome], queues: list[str], limit: int,
                        worker: str, lease_seconds: float) -> tuple[list[bool], list[Job]]:
        now = self._now()
        by_queue = _group(range(len(outcomes)), lambda i: outcomes[i].lease_token)
        args = {q: [len(ix), *[a for i in ix for a in _outcome_args(outcomes[i])]]
                for q, ix in by_queue.items()}
        head = [WAKE_CAP, self.options.succeeded_ttl, self.options.dead_ttl]
        fgroups, calls = (self._calls("finish", list(by_queue), head, args, now=now)
                          if by_queue else ([], []))
        reserving = limit > 0 and bool(queues)
        if reserving and not self._cluster:
            _, rcalls = self._calls(
                "reserve", queues, [limit, worker, repr(float(lease_seconds)), 100 + limit,
                                    WAKE_CAP], {q: [f"{uuid.uuid4().hex}:{q}"] for q in queues},
                now=now)
            calls += rcalls
        results = self._scripts.run(self._r, calls) if calls else []
        accepted = [False] * len(outcomes)
        for g, (flags, wakes) in zip(fgroups, results, strict=False):
            order = [i for q in g for i in by_queue[q]]
            for i, flag in zip(order, flags, strict=True):
                accepted[i] = bool(flag)
            self._wake(g, wakes)
        if not reserving:
            return accepted, []
        if not self._cluster:
            jobs_flat, _, _ = results[-1]
            return accepted, _decode_jobs(jobs_flat)
        return accepted, self._reserve_cluster(queues, limit, worker, lease_seconds)

    def _reserve_cluster(self, queues: list[str], limit: int, worker: str,
                         lease_seconds: float) -> list[Job]:
        jobs: list[Job] = []
        for k, q in enumerate(queues):
            [(g, (flat, wakes, _))] = self._script(
                "reserve", [q], [limit - len(jobs), worker, repr(float(lease_seconds)),
                                 100 + limit, WAKE_CAP], {q: [f"{uuid.uuid4().hex}:{q}"]})
            jobs += _decode_jobs(flat)
            self._wake(g, wakes)
            if len(jobs) >= limit:
                rest = queues[k + 1:]
                if rest:  # pass on a wake-up this call may have consumed
                    pipe = self._r.pipeline(transaction=False)
                    for r in rest:
                        pipe.zcard(f"{self._base(r)}:ready")
                    self._wake(rest, [min(int(n), 1) for n in pipe.execute()])
                break
        return jobs

    def extend(self, leases: Sequence[Lease], lease_seconds: float) -> list[str]:
        if not leases:
            return []
        by_queue = _group(leases, lambda lease: lease.token)
        args = {q: [len(ls), *[a for lease in ls for a in (lease.job_id, lease.token)]]
                for q, ls in by_queue.items()}

        def go() -> list[str]:
            lost: set[str] = set()
            if by_queue:
                for _, res in self._script("extend", list(by_queue),
                                           [repr(float(lease_seconds))], args):
                    lost.update(i.decode() for i in res)
            held = {lease.job_id for ls in by_queue.values() for lease in ls} - lost
            return [lease.job_id for lease in leases if lease.job_id not in held]
        return self._run(go)

    def release(self, leases: Sequence[Lease], delay: float = 0.0) -> int:
        by_queue = _group(leases, lambda lease: lease.token)
        if not by_queue:
            return 0
        args = {q: [len(ls), *[a for lease in ls for a in (lease.job_id, lease.token)]]
                for q, ls in by_queue.items()}

        def go() -> int:
            total = 0
            for g, (n, wakes) in self._script("release", list(by_queue),
                                              [WAKE_CAP, repr(float(delay))], args):
                total += int(n)
                self._wake(g, wakes)
            return total
        return self._run(go)

    def recover(self, leases: Sequence[Lease] | None = None) -> int:
        error = ErrorInfo("LeaseLost", "the worker holding this job's lease stopped "
                          "renewing it (crashed, killed or hung)").to_json()
        head = [WAKE_CAP, self.max_lost_leases, error, self.options.dead_ttl, BATCH]

        def go() -> int:
            if leases is not None:
                by_queue = _group(leases, lambda lease: lease.token)
                args = {q: [len(ls), *[a for lease in ls for a in (lease.job_id, lease.token)]]
                        for q, ls in by_queue.items()}
                queues = list(by_queue)
            else:
                queues = self._all_queues()
                args = {q: [-1] for q in queues}
            total, more = 0, bool(queues)
            while more:
                more = False
                for g, (n, wakes, again) in self._script("recover", queues, head, args):
                    total += int(n)
                    more = more or (leases is None and bool(again))
                    self._wake(g, wakes)
            return total
        return self._run(go)

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        queues = list(dict.fromkeys(queues))
        if not queues or timeout <= 0:
            return

        def go() -> None:
            pipe = self._r.pipeline(transaction=False)
            for q in queues:
                pipe.zrange(f"{self._base(q)}:sched", 0, 0, withscores=True)
                pipe.exists(f"{self._base(q)}:paused")
            out = pipe.execute()
            heads = [out[2 * i][0][1] for i in range(len(queues))
                     if out[2 * i] and not out[2 * i + 1]]
            block = min(timeout, MAX_BLOCK)
            if heads:
                if self._server_time:
                    secs, micros = self._r.time()
                    now = secs + micros / 1e6
                else:
                    now = self.clock.now()
                block = min(block, min(heads) - now)
            if block >= 0.001:  # BLPOP's timeout has millisecond resolution; 0 = forever
                self._blocking.blpop([self._wake_key(q) for q in queues],
                                     timeout=round(block + 0.0005, 3))
        self._run(go, max(min(timeout, self.options.timeout), 1.0))

    # -- operating --------------------------------------------------------------------
    def _requeue(self, queues: Sequence[str], ids: Sequence[str], dead_only: bool,
                 task: str | None) -> int:
        total = 0
        for i in range(0, len(ids), CHUNK):
            chunk = list(ids[i:i + CHUNK])
            for g, (n, wakes) in self._script(
                    "requeue", queues, [WAKE_CAP, "1" if dead_only else "0", task or ""],
                    tail=[len(chunk), *chunk]):
                total += int(n)
                self._wake(g, wakes)
        return total

    def requeue(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return self._run(lambda: self._requeue(self._all_queues(), ids, False, None))

    def requeue_dead(self, queue: str | None = None, task: str | None = None) -> int:
        def go() -> int:
            total = 0
            for q in [queue] if queue else self._all_queues():
                cursor = b"-"
                while True:
                    ids = self._r.zrangebylex(f"{self._base(q)}:ids:dead", cursor, b"+",
                                              start=0, num=BATCH)
                    if not ids:
                        break
                    total += self._requeue([q], [i.decode() for i in ids], True, task)
                    cursor = b"(" + ids[-1]
            return total
        return self._run(go)

    def cancel(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0

        def go() -> int:
            total, queues = 0, self._all_queues()
            for i in range(0, len(ids), CHUNK):
                chunk = list(ids[i:i + CHUNK])
                for _, (n, _more) in self._script("cancel", queues, [self.options.dead_ttl],
                                                  tail=[len(chunk), *chunk]):
                    total += int(n)
            return total
        return self._run(go)

    def purge(self, queue: str) -> int:
        def go() -> int:
            total, more = 0, True
            while more:
                [(_, (n, again))] = self._script("cancel", [queue], [self.options.dead_ttl],
                                                 tail=[-1, BATCH])
                total, more = total + int(n), bool(again)
            return total
        return self._run(go)

    def set_paused(self, queue: str, paused: bool) -> None:
        def go() -> None:
            self._register([queue])
            key = f"{self._base(queue)}:paused"
            if paused:
                self._r.set(key, "1")
                return
            self._r.delete(key)
            self._r.lpush(self._wake_key(queue), "1")
            self._r.ltrim(self._wake_key(queue), 0, WAKE_CAP - 1)
        self._run(go)

    def prune(self, succeeded_before: float, dead_before: float, batch: int = 1000) -> int:
        def go() -> int:
            total = 0
            for q in self._all_queues():
                while True:
                    [n] = self._scripts.run(self._r, [(
                        "prune", [self._base(q)],
                        [repr(float(succeeded_before)), repr(float(dead_before)), batch])])
                    total += int(n)
                    if int(n) < batch:
                        break
            return total
        return self._run(go)

    # -- inspecting -------------------------------------------------------------------
    def _probe(self, job_id: str, queues: Sequence[str]) -> Job | None:
        if not queues:
            return None
        pipe = self._r.pipeline(transaction=False)
        for q in queues:
            pipe.hgetall(f"{self._base(q)}:j:{job_id}")
        for raw in pipe.execute():
            if raw:
                return decode_job(job_id, raw)
        return None

    def get(self, job_id: str) -> Job | None:
        def go() -> Job | None:
            known = list(self._queues)
            job = self._probe(job_id, known)
            if job is None:
                job = self._probe(job_id, [q for q in self._all_queues() if q not in known])
            return job
        return self._run(go)

    def list_jobs(self, filter: JobFilter, limit: int = 100,
                  before_id: str | None = None) -> list[Job]:
        from .redis_inspect import list_jobs

        return self._run(lambda: list_jobs(self, filter, limit, before_id))

    def queue_stats(self) -> list[QueueStats]:
        def go() -> list[QueueStats]:
            out = []
            for g, res in self._script("stats", self._all_queues(), []):
                for q, row in zip(g, res, strict=True):
                    counts = {s: int(n) for s, n in zip(STATUSES, row[1:7], strict=True)
                              if int(n)}
                    out.append(QueueStats(q, counts, float(row[7]) if row[7] else None,
                                          bool(row[0])))
            return sorted(out, key=lambda s: s.queue)
        return self._run(go)

    # -- workers and coordination -----------------------------------------------------
    def _global(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts.run(self._r, [(name, keys, args)])[0]

    def register_worker(self, info: WorkerInfo) -> None:
        keys = [f"{self._g}:workers", f"{self._g}:seen"]
        data = json.dumps(info.to_dict())
        self._run(lambda: self._global("worker", keys, ["register", self._now(), info.id, data]))

    def unregister_worker(self, worker_id: str) -> None:
        keys = [f"{self._g}:workers", f"{self._g}:seen"]
        self._run(lambda: self._global("worker", keys, ["unregister", self._now(), worker_id]))

    def workers(self, seen_within: float = 60.0) -> list[WorkerInfo]:
        keys = [f"{self._g}:workers", f"{self._g}:seen"]
        flat = self._run(lambda: self._global("worker", keys, ["list", self._now(),
                                                               repr(float(seen_within))]))
        return [WorkerInfo.from_dict({**json.loads(flat[k]), "seen_at": float(flat[k + 1])})
                for k in range(0, len(flat), 2)]

    def acquire_lease(self, name: str, owner: str, ttl: float) -> bool:
        args = ["acquire", self._now(), owner, repr(float(ttl)), "1" if self._server_time else "0"]
        return bool(self._run(lambda: self._global("lease", [f"{self._g}:lease:{name}"], args)))

    def release_lease(self, name: str, owner: str) -> None:
        args = ["release", self._now(), owner, "0", "0"]
        self._run(lambda: self._global("lease", [f"{self._g}:lease:{name}"], args))

    def close(self) -> None:
        self._r.close()
        self._blocking.close()


def _job_args(j: NewJob) -> list[Any]:
    return [j.id, j.task, j.payload, str(j.priority), str(j.max_attempts),
            "" if j.run_at is None else repr(float(j.run_at)), j.unique_key or "",
            j.task_version or "", json.dumps(j.trace) if j.trace else ""]


def _outcome_args(o: Outcome) -> list[Any]:
    return [o.job_id, o.lease_token, _KIND[o.status],
            "" if o.retry_at is None else repr(float(o.retry_at)), o.dead_reason or "",
            o.error.to_json() if o.error else "", o.result or ""]


def _decode_jobs(flat: list[Any]) -> list[Job]:
    return [decode_job(flat[k].decode(), flat[k + 1]) for k in range(0, len(flat), 2)]


def from_url(url: str, clock: Clock | None = None) -> RedisBroker:
    """See the module docstring for the URL forms and options."""
    return RedisBroker(parse_url(url), clock)
