"""The Redis broker's Lua scripts and job records.

Each ``lua/<name>.lua`` is one atomic change; ``lua/_lib.lua`` (helpers and the key
layout) is prepended to it. Scripts are called by SHA (EVALSHA) and loaded again when
Redis answers NOSCRIPT (after a restart, a failover or SCRIPT FLUSH).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from ..job import STATUS_OF, ErrorInfo, Job, JobStatus, job_of
from .redis_conn import nodes

pack_command: Any
try:
    from hiredis import pack_command
except ImportError:  # redis-py without hiredis: its own packer
    pack_command = None

NAMES = ("enqueue", "reserve", "finish", "extend", "release", "recover", "requeue",
         "cancel", "prune", "stats", "worker", "lease", "marks", "unpause")
BARE = ("enqueue_plain",)  # self-contained: no _lib.lua (see the script's header)
STATUSES = tuple(s.value for s in JobStatus)


def _read(name: str) -> str:
    return resources.files("chervil.brokers").joinpath("lua", f"{name}.lua").read_text()


class Scripts:
    def __init__(self) -> None:
        lib = _read("_lib")
        self.text = {name: f"{lib}\n{_read(name)}" for name in NAMES}
        self.text.update({name: _read(name) for name in BARE})
        self.sha = {name: hashlib.sha1(t.encode()).hexdigest()
                    for name, t in self.text.items()}
        # One connection kept out of the pool for single calls (see _call): the thread
        # that finds it free uses it; the others take one from the pool.
        self._lane = threading.Lock()
        self._held: Any = None
        self._held_key: tuple[int, int] = (0, 0)  # (pid, id of its pool)

    def load(self, client: Any) -> None:
        for node in nodes(client):
            for text in self.text.values():
                node.script_load(text)

    def run(self, client: Any, calls: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Run (name, keys, args) calls in one pipeline; reload and rerun on NOSCRIPT.

        Only the calls Redis refused with NOSCRIPT run again: they did not run at all.
        Any other error reply is raised, once every reply has been read.
        """
        pool = getattr(client, "connection_pool", None)  # None: a cluster client
        commands = [("EVALSHA", self.sha[name], len(keys), *keys, *args)
                    for name, keys, args in calls]
        out = self._send(client, pool, commands)
        missing = [i for i, res in enumerate(out) if isinstance(res, NoScriptError)]
        if missing:  # those did not run: load, and run them
            self.load(client)
            for i, res in zip(missing, self._send(client, pool, [commands[i] for i in missing]),
                              strict=True):
                out[i] = res
        for res in out:
            if isinstance(res, Exception):
                raise res
        return out

    def _send(self, client: Any, pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies to commands sent in one write (an error reply as its exception)."""
        if pool is not None:
            return self._call(pool, commands)
        pipe = client.pipeline(transaction=False)  # a cluster client routes each command
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute(raise_on_error=False))

    def _call(self, pool: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands packed by hiredis and sent in one write, what redis-py's pipeline would
        do without its per-command work, on the held connection when it is free; their
        replies, an error reply as its exception.

        Taking a connection from redis-py's pool and giving it back (its stale-data poll,
        its connection counters) cost 30-40 µs per call here, a sixth of a single-job
        enqueue. The held connection skips that: only this object uses it, and any
        failure but a Redis error reply drops it, so it is never left with unread data.
        A forked child makes its own (the key holds the pid)."""
        packed = None if pack_command is None else [b"".join(map(pack_command, commands))]
        if self._lane.acquire(blocking=False):
            try:
                key = (os.getpid(), id(pool))
                if self._held is None or self._held_key != key:
                    self._held = pool.make_connection()
                    self._held_key = key
                return _exchange(self._held, commands, packed)
            finally:
                self._lane.release()
        conn = pool.get_connection()
        try:
            return _exchange(conn, commands, packed)
        finally:
            pool.release(conn)

    def close(self) -> None:
        """Close the held connection (the pool's are closed with the client)."""
        # a child forked while another thread held the lane would wait forever
        locked = self._lane.acquire(timeout=1.0)
        try:
            if self._held is not None and self._held_key[0] == os.getpid():
                self._held.disconnect()
            self._held = None
        finally:
            if locked:
                self._lane.release()


def _exchange(conn: Any, commands: list[tuple[Any, ...]],
              packed: list[bytes] | None) -> list[Any]:
    """Send commands and read their replies; a connection whose state is unknown after a
    failure is disconnected (its next use connects again)."""
    try:
        conn.send_packed_command(packed if packed is not None
                                 else conn.pack_commands(commands))
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(conn.read_response())
            except ResponseError as exc:  # a whole reply was read: the connection is in step
                out.append(exc)
        return out
    except BaseException:
        conn.disconnect()
        raise


_STATUS = {k.encode(): v for k, v in STATUS_OF.items()}


def decode_job(job_id: str, raw: dict[bytes, bytes] | list[bytes]) -> Job:
    """A job from its hash (HGETALL as a dict, or the flat list a script returns).

    Inline rather than through helpers: a drain decodes one per job (20 -> 10 µs)."""
    d = raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))
    g = d.get
    v = g(b"last_error")
    error = ErrorInfo.from_json(v) if v else None
    trace = g(b"trace")
    status = g(b"status", b"")
    # b'' floats read as none: finish clears lease_until by writing ''
    return job_of((
        job_id, g(b"task", b"").decode(), g(b"queue", b"").decode(), g(b"payload") or b"",
        _STATUS.get(status) or JobStatus(status.decode()), int(g(b"priority") or 0),
        int(g(b"attempts") or 0), int(g(b"max_attempts") or 1), int(g(b"lost_leases") or 0), error,
        None if (v := g(b"dead_reason")) is None else v.decode(),
        float(g(b"created_at") or 0), float(g(b"run_at") or 0),
        float(v) if (v := g(b"started_at")) else None,
        float(v) if (v := g(b"finished_at")) else None,
        None if (v := g(b"worker")) is None else v.decode(),
        float(v) if (v := g(b"lease_until")) else None,
        None if (v := g(b"lease_token")) is None else v.decode(),
        None if (v := g(b"unique_key")) is None else v.decode(),
        None if (v := g(b"task_version")) is None else v.decode(),
        None if (v := g(b"result")) is None else v.decode(),
        json.loads(trace) if trace else {},
        None if (v := g(b"limit_key")) is None else v.decode(),
        None if (v := g(b"rate_key")) is None else v.decode(),
    ))
