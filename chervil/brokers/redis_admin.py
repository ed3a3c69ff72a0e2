"""The Redis broker's operating and inspecting verbs: requeue, cancel, purge, pause,
prune, get, list_jobs, queue_stats.

Jobs are found by id by looking in each known queue (one pipelined HGETALL or one
script per queue), so these cost O(number of queues), not O(number of jobs). Listing
reads the per-queue, per-status id indexes (``<prefix>:{<queue>}:ids:<status>``, score
0, so ZREVRANGEBYLEX pages them newest first: ids are UUIDv7, time-sortable), merging
the indexes the filter selects a page at a time; running jobs, as many as the workers
run at once, are read from ``<base>:run`` and sorted here. A task filter has no index of its
own: pages are read until enough jobs of that task are found.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..job import Job
from .base import JobFilter, QueueStats
from .redis_core import BATCH, CHUNK, WAKE_CAP, RedisCore
from .redis_scripts import STATUSES, decode_job


class AdminVerbs(RedisCore):
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
                    [(n, forgot)] = self._scripts.run(self._r, [(
                        "prune", [self._base(q)],
                        [repr(float(succeeded_before)), repr(float(dead_before)), batch,
                         self._now()])])
                    total += int(n)
                    if int(n) < batch and int(forgot) < batch:
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
        return self._run(lambda: self._list_jobs(filter, limit, before_id))

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


    def _list_jobs(self, filter: JobFilter, limit: int,
                       before_id: str | None) -> list[Job]:
        if limit <= 0:
            return []
        r = self._r
        queues = [filter.queue] if filter.queue else self._all_queues()
        statuses = [filter.status.value] if filter.status else list(STATUSES)
        # running jobs are listed from <base>:run (as many as workers run at once), every
        # other status from its lexicographic id index
        index = [(q, f"{self._base(q)}:run" if s == "running" else f"{self._base(q)}:ids:{s}")
                 for q in queues for s in statuses]
        page = limit if filter.task is None else max(limit, 200)
        out: list[Job] = []
        cursor = before_id
        while index and len(out) < limit:
            hi = b"(" + cursor.encode() if cursor else b"+"
            pipe = r.pipeline(transaction=False)
            for _, key in index:
                if key.endswith(":run"):
                    pipe.zrange(key, 0, -1)
                else:
                    pipe.zrevrangebylex(key, hi, b"-", start=0, num=page)
            found: dict[str, str] = {}
            exhausted = True
            for (q, key), ids in zip(index, pipe.execute(), strict=True):
                if key.endswith(":run"):
                    below = sorted((i for i in ids if not cursor or i.decode() < cursor),
                                   reverse=True)
                    ids = below[:page]
                    exhausted = exhausted and len(below) <= page
                else:
                    exhausted = exhausted and len(ids) < page
                for i in ids:
                    found[i.decode()] = q
            ids = sorted(found, reverse=True)[:page]
            if not ids:
                break
            pipe = r.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(f"{self._base(found[i])}:j:{i}")
            for i, raw in zip(ids, pipe.execute(), strict=True):
                if not raw:  # expired by its retention; prune drops the index entry
                    continue
                job = decode_job(i, raw)
                if filter.task is not None and job.task != filter.task:
                    continue
                out.append(job)
                if len(out) == limit:
                    break
            if exhausted and len(ids) == len(found):
                break
            cursor = ids[-1]
        return out
