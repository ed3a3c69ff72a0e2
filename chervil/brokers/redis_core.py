"""The Redis broker's plumbing: keys, time, retries, and calling scripts per slot.

:class:`RedisCore` is the base of :class:`chervil.brokers.redis.RedisBroker`; the verbs
live there and in :mod:`chervil.brokers.redis_admin`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
from redis.exceptions import ClusterDownError, ReadOnlyError, RedisClusterException, TryAgainError

from ..clock import Clock, SystemClock
from ..errors import BrokerUnavailable
from .redis_conn import MAX_BLOCK, RedisOptions, check_server, make_client
from .redis_scripts import Scripts

log = logging.getLogger("chervil.brokers.redis")
T = TypeVar("T")
WAKE_CAP = 16  # tokens a wake list holds at most
CHUNK = 2000  # jobs per enqueue script; ids per requeue/cancel script
BATCH = 1000  # records per recover / purge / prune script call
_RETRY = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError,
          ReadOnlyError, RedisClusterException)
Call = tuple[str, list[str], list[Any]]


def _queue_of(token: str) -> str | None:
    """The queue a lease token was issued for (tokens are ``<32 hex>:<queue>``)."""
    return token[33:] if len(token) > 33 and token[32] == ":" else None


def group_by_queue(items: Iterable[T], token: Callable[[T], str]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = {}
    for item in items:
        queue = _queue_of(token(item))
        if queue is not None:
            groups.setdefault(queue, []).append(item)
    return groups


class RedisCore:
    max_lost_leases: int = 3

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
        self._ptasks = f"{self._g}:ptasks"  # set of paused task types

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

    def _with_ptasks(self, calls: list[Call]) -> list[Call]:
        """Standalone: the scripts read the paused task types themselves (one more key;
        on a cluster it is another slot, so reserve gets them as arguments instead)."""
        if self._cluster:
            return calls
        return [(name, [*keys, self._ptasks], args) for name, keys, args in calls]

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

    def _global(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self._scripts.run(self._r, [(name, keys, args)])[0]

    def close(self) -> None:
        self._scripts.close()
        self._r.close()
        self._blocking.close()


