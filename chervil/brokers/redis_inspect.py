"""Listing jobs from the Redis broker's per-queue, per-status id indexes.

Each ``<prefix>:{<queue>}:ids:<status>`` sorted set holds ids with score 0, so
ZREVRANGEBYLEX pages it newest first (ids are UUIDv7, time-sortable). A listing merges
the indexes the filter selects (one queue or all, one status or all), a page at a time:
O(indexes x (log n + page)). A task filter has no index of its own: pages are read
until enough jobs of that task are found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..job import Job
from .base import JobFilter
from .redis_scripts import STATUSES, decode_job

if TYPE_CHECKING:
    from .redis import RedisBroker


def list_jobs(broker: RedisBroker, filter: JobFilter, limit: int,
              before_id: str | None) -> list[Job]:
    if limit <= 0:
        return []
    r = broker._r
    queues = [filter.queue] if filter.queue else broker._all_queues()
    statuses = [filter.status.value] if filter.status else list(STATUSES)
    index = [(q, f"{broker._base(q)}:ids:{s}") for q in queues for s in statuses]
    page = limit if filter.task is None else max(limit, 200)
    out: list[Job] = []
    cursor = before_id
    while index and len(out) < limit:
        hi = b"(" + cursor.encode() if cursor else b"+"
        pipe = r.pipeline(transaction=False)
        for _, key in index:
            pipe.zrevrangebylex(key, hi, b"-", start=0, num=page)
        found: dict[str, str] = {}
        exhausted = True
        for (q, _), ids in zip(index, pipe.execute(), strict=True):
            exhausted = exhausted and len(ids) < page
            for i in ids:
                found[i.decode()] = q
        ids = sorted(found, reverse=True)[:page]
        if not ids:
            break
        pipe = r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(f"{broker._base(found[i])}:j:{i}")
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
