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
costs O(number of queues). Unique keys (modes queued, active, window) are unique per
queue. A finished small job costs about 0.9 KB of Redis memory (record ~490 B, two
index entries ~145 B each).

Flow control is enforced inside the scripts, and is scoped per queue: slot counts,
token buckets and parked jobs live under the queue's hash tag (one slot on Redis
Cluster), so a ``limit_key`` or ``rate_key`` shared by tasks of two queues is two
independent locks / limits / buckets. Held-back jobs are *parked* rather than scanned
again: a job whose limit key has no room waits in a per-key list and comes back when a
slot frees (finish of any kind, release, recover; a stale, fenced finish frees
nothing); a job whose bucket is empty waits per rate key until a token is due; a job of
a paused task type (``set_task_paused``) waits per task until resumed. A parked job
stays ``queued``, spends no attempt and costs reserve nothing, so plain jobs behind it
are reserved as before; one reserve call parks at most ``4 * limit + 64`` jobs. Paused
task types are one global set (``<prefix>:{_}:ptasks``) that the scripts read
themselves on a standalone Redis; on a cluster reserve reads it first (one more round
trip per reserve), so a reserve racing with a pause may start a job of that task.

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
import uuid
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

from ..clock import Clock
from ..errors import ConfigurationError
from ..job import ErrorInfo, Job, JobStatus
from .base import UNIQUE_MODES, Broker, Enqueued, Lease, NewJob, Outcome, WorkerInfo
from .redis_admin import AdminVerbs
from .redis_conn import MAX_BLOCK, parse_url
from .redis_core import BATCH, CHUNK, WAKE_CAP, Call, group_by_queue
from .redis_scripts import decode_job

_KIND = {JobStatus.SUCCEEDED: "s", JobStatus.SCHEDULED: "r", JobStatus.DEAD: "d"}


class RedisBroker(AdminVerbs, Broker):
    """See the module docstring. ``max_lost_leases`` may be set after construction."""

    # -- producing --------------------------------------------------------------------
    def enqueue(self, jobs: Sequence[NewJob], connection: Any = None) -> list[Enqueued]:
        if connection is not None:
            raise ConfigurationError("the Redis broker has no transaction to join: enqueue "
                                     "without connection= (or use the PostgreSQL broker)")
        if not jobs:
            return []
        _check_flow(jobs)
        if len(jobs) == 1 and not self._cluster:
            return [self._enqueue_one(jobs[0])]
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
                calls += self._with_ptasks(cs)
                orders += [[i for q in g for i in by_queue[q]] for g in groups]
                all_groups += groups
            out: list[Enqueued | None] = [None] * len(jobs)
            for k, res in enumerate(self._scripts.run(self._r, calls)):
                flat, wakes = res
                for n, i in enumerate(orders[k]):
                    out[i] = _enqueued(flat, n, jobs[i], attempts[0])
                self._wake(all_groups[k], wakes)
            return [e for e in out if e is not None]

        return self._run(go, self.options.enqueue_timeout)

    def _enqueue_one(self, job: NewJob) -> Enqueued:
        """A batch of one, built without the batch bookkeeping; a job with no unique,
        limit or rate key that is ready now takes the shorter script enqueue_plain."""
        q = job.queue
        if (job.unique_key is None and job.limit_key is None and job.rate_key is None
                and job.run_at is None):
            call: Call = ("enqueue_plain", [self._base(q), self._wake_key(q)], [
                "", q, job.id, job.task, job.payload, str(job.priority),
                str(job.max_attempts), WAKE_CAP, job.task_version or "",
                json.dumps(job.trace) if job.trace else ""])
        else:
            call = ("enqueue", [self._base(q), self._wake_key(q), self._ptasks],
                    ["", 1, WAKE_CAP, q, 1, *_job_args(job)])
        attempts = 0

        def go() -> Enqueued:
            nonlocal attempts
            attempts += 1
            self._register((q,))
            call[2][0] = self._now()
            flat, _wakes = self._scripts.run(self._r, [call])[0]
            return _enqueued(flat, 0, job, attempts)

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
        by_queue = group_by_queue(range(len(outcomes)), lambda i: outcomes[i].lease_token)
        args = {q: [len(ix), *[a for i in ix for a in _outcome_args(outcomes[i])]]
                for q, ix in by_queue.items()}
        head = [WAKE_CAP, self.options.succeeded_ttl, self.options.dead_ttl]
        fgroups, calls = (self._calls("finish", list(by_queue), head, args, now=now)
                          if by_queue else ([], []))
        reserving = limit > 0 and bool(queues)
        if reserving and not self._cluster:
            calls.append(self._reserve_call(queues, limit, worker, lease_seconds, now))
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

    def _reserve_call(self, queues: list[str], limit: int, worker: str,
                      lease_seconds: float, now: str | None = None) -> Call:
        """Standalone: the one reserve script call over every queue."""
        [call] = self._with_ptasks(self._calls(
            "reserve", queues, [limit, worker, repr(float(lease_seconds)), 100 + limit,
                                WAKE_CAP], {q: [f"{uuid.uuid4().hex}:{q}"] for q in queues},
            now=now)[1])
        return call

    def _reserve_cluster(self, queues: list[str], limit: int, worker: str,
                         lease_seconds: float) -> list[Job]:
        jobs: list[Job] = []
        ptasks = sorted(t.decode() for t in self._r.smembers(self._ptasks))
        for k, q in enumerate(queues):
            [(g, (flat, wakes, _))] = self._script(
                "reserve", [q], [limit - len(jobs), worker, repr(float(lease_seconds)),
                                 100 + limit, WAKE_CAP], {q: [f"{uuid.uuid4().hex}:{q}"]},
                tail=ptasks)
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
        by_queue = group_by_queue(leases, lambda lease: lease.token)
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
        by_queue = group_by_queue(leases, lambda lease: lease.token)
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
                by_queue = group_by_queue(leases, lambda lease: lease.token)
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
            block = self._block_seconds(queues, timeout)
            if block >= 0.001:  # BLPOP's timeout has millisecond resolution; 0 = forever
                self._blocking.blpop([self._wake_key(q) for q in queues],
                                     timeout=round(block + 0.0005, 3))
        self._run(go, max(min(timeout, self.options.timeout), 1.0))

    def wait_and_reserve(self, queues: Sequence[str], timeout: float, limit: int,
                         worker: str, lease_seconds: float) -> list[Job]:
        """Standalone: BLPOP and the reserve script pipelined on the blocking connection,
        so Redis runs the reserve the moment the wake-up comes (a round trip less between
        an enqueue and its pickup: 0.2 ms here)."""
        queues = list(dict.fromkeys(queues))
        if self._cluster or not queues or timeout <= 0 or limit <= 0:
            return super().wait_and_reserve(queues, timeout, limit, worker, lease_seconds)

        def go() -> list[Job]:
            block = self._block_seconds(queues, timeout)
            if block < 0.001:
                return self._finish_reserve((), queues, limit, worker, lease_seconds)[1]
            name, keys, args = self._reserve_call(queues, limit, worker, lease_seconds)
            pipe = self._blocking.pipeline(transaction=False)
            pipe.blpop([self._wake_key(q) for q in queues], timeout=round(block + 0.0005, 3))
            pipe.execute_command("EVALSHA", self._scripts.sha[name], len(keys), *keys, *args)
            _, res = pipe.execute(raise_on_error=False)
            if isinstance(res, NoScriptError):  # it did not run: load, then reserve anew
                self._scripts.load(self._r)
                return self._finish_reserve((), queues, limit, worker, lease_seconds)[1]
            if isinstance(res, Exception):
                raise res
            return _decode_jobs(res[0])
        return self._run(go, max(min(timeout, self.options.timeout), 1.0))

    def _block_seconds(self, queues: list[str], timeout: float) -> float:
        """How long a wait may block: ``timeout``, capped at the first scheduled job or
        rate-limit token due in these queues (not in paused ones)."""
        pipe = self._r.pipeline(transaction=False)
        for q in queues:
            pipe.zrange(f"{self._base(q)}:sched", 0, 0, withscores=True)
            pipe.zrange(f"{self._base(q)}:rdue", 0, 0, withscores=True)
            pipe.exists(f"{self._base(q)}:paused")
        out = pipe.execute()
        heads = [first[0][1] for i in range(len(queues)) if not out[3 * i + 2]
                 for first in out[3 * i:3 * i + 2] if first]
        block = min(timeout, MAX_BLOCK)
        if heads:
            if self._server_time:
                secs, micros = self._r.time()
                now = secs + micros / 1e6
            else:
                now = self.clock.now()
            block = min(block, min(heads) - now)
        return block

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

    # -- flow control and scheduling ----------------------------------------------------
    def set_task_paused(self, task: str, paused: bool) -> None:
        def go() -> None:
            if paused:
                self._r.sadd(self._ptasks, task)
                return
            self._r.srem(self._ptasks, task)
            queues, more = self._all_queues(), True
            while queues and more:
                more = False
                for g, (_, wakes, again) in self._script("unpause", queues,
                                                         [WAKE_CAP, task, BATCH]):
                    more = more or bool(again)
                    self._wake(g, wakes)
        self._run(go)

    def paused_tasks(self) -> list[str]:
        return sorted(t.decode() for t in self._run(lambda: self._r.smembers(self._ptasks)))

    def schedule_marks(self) -> dict[str, float]:
        raw = self._run(lambda: self._r.hgetall(f"{self._g}:marks"))
        return {k.decode(): float(v) for k, v in raw.items()}

    def mark_schedule(self, name: str, fire_at: float) -> None:
        self._run(lambda: self._global("marks", [f"{self._g}:marks"],
                                       [name, repr(float(fire_at))]))

def _job_args(j: NewJob) -> list[Any]:
    return [j.id, j.task, j.payload, str(j.priority), str(j.max_attempts),
            "" if j.run_at is None else repr(float(j.run_at)), j.unique_key or "",
            j.task_version or "", json.dumps(j.trace) if j.trace else "", j.unique_mode,
            "" if j.unique_until is None else repr(float(j.unique_until)),
            j.limit_key or "", str(int(j.limit_n)), j.rate_key or "",
            repr(float(j.rate_per_second)), repr(float(j.rate_burst))]


def _enqueued(flat: list[Any], n: int, job: NewJob, attempt: int) -> Enqueued:
    """The n-th answer of the enqueue script for ``job``, sent on call ``attempt``."""
    jid, dup = flat[2 * n].decode(), bool(flat[2 * n + 1])
    # a retry after a lost reply finds the job it wrote itself
    return Enqueued(jid, dup and not (attempt > 1 and jid == job.id))


def _check_flow(jobs: Sequence[NewJob]) -> None:
    """Flow-control fields the scripts could not honour are refused, not ignored."""
    for j in jobs:
        if j.limit_key is not None and j.limit_n < 1:
            raise ConfigurationError(f"job {j.id} ({j.task}): limit_key {j.limit_key!r} "
                                     f"needs limit_n >= 1, not {j.limit_n}")
        if j.rate_key is not None and (j.rate_per_second <= 0 or j.rate_burst < 1):
            raise ConfigurationError(
                f"job {j.id} ({j.task}): rate_key {j.rate_key!r} needs rate_per_second > 0 "
                f"and rate_burst >= 1, not {j.rate_per_second} and {j.rate_burst}")
        if j.unique_mode not in UNIQUE_MODES:
            raise ConfigurationError(f"job {j.id} ({j.task}): unknown unique_mode "
                                     f"{j.unique_mode!r}; use one of {UNIQUE_MODES}")


def _outcome_args(o: Outcome) -> list[Any]:
    return [o.job_id, o.lease_token, _KIND[o.status],
            "" if o.retry_at is None else repr(float(o.retry_at)), o.dead_reason or "",
            o.error.to_json() if o.error else "", o.result or ""]


def _decode_jobs(flat: list[Any]) -> list[Job]:
    return [decode_job(flat[k].decode(), flat[k + 1]) for k in range(0, len(flat), 2)]


def from_url(url: str, clock: Clock | None = None) -> RedisBroker:
    """See the module docstring for the URL forms and options."""
    return RedisBroker(parse_url(url), clock)
