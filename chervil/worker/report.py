"""What a child tells its supervisor: the jobs it holds, and which of them it started.

Held and done travel over a pipe, one line per batch (a reserve, a finish), plain text:

    H <id> <token> [<id> <token> ...]    leased these jobs
    D <id> [<id> ...]                    done with these (finished or handed back)
    S <id> <deadline|->                  started one (only when the table below is full)

H lines are not written when the jobs arrive but just before the child next waits (for a
free thread or on the broker) or writes a D line, whichever comes first: a write wakes the
supervisor, and on two cores that wake-up, between a job's reserve and its start, cost
the pickup of a job sent to an idle worker 70 µs of its 0.9 ms (Redis). The supervisor
learns of a job a round trip later at most; a child killed within that window leaves
those jobs to lease expiry, as a lone child would (at least once either way).

Started jobs go in a table in shared memory (a file both processes map), written before
the task runs, so a job start costs no system call and does not wake the supervisor. The
supervisor reads the table to enforce hard time limits and, when a child dies, to tell
the jobs it had started (a lost lease) from those it had not (handed back). An entry is
cleared only after its job's ``D`` line is written, so a job that ran and whose outcome is
not recorded yet still counts as started.

Entry layout (``ENTRY`` bytes): seq (u8, odd while being written), deadline (f64,
wall clock, NaN for none), id length (u8), id (utf-8). Readers retry when the sequence
byte changed under them.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterable

from ..job import Job

ENTRY = 256
_FIELDS = struct.Struct("<dB")  # after the sequence byte: deadline, id length
_ID_AT = 1 + _FIELDS.size
_ID_MAX = ENTRY - _ID_AT


def table_size(threads: int, prefetch: int = 0) -> int:
    """Entries for the jobs a child has started and not recorded yet: its threads' jobs,
    and those finished while a reserve (which records them) is under way, at most about
    what it holds (threads and prefetch), plus room. A full table is not an error: starts
    then go over the pipe (``S`` lines)."""
    return (4 * threads + prefetch + 16) * ENTRY


class StartedTable:
    """The shared table over ``fd`` (already sized to :func:`table_size`)."""

    def __init__(self, fd: int) -> None:
        self.map = mmap.mmap(fd, os.fstat(fd).st_size)
        self.entries = len(self.map) // ENTRY

    # -- child side ---------------------------------------------------------------------
    def write(self, index: int, job_id: bytes, deadline: float | None) -> None:
        off = index * ENTRY
        m = self.map
        seq = m[off]
        m[off] = (seq + 1) & 0xFF  # odd: being written
        d = math.nan if deadline is None else deadline
        _FIELDS.pack_into(m, off + 1, d, len(job_id))
        m[off + _ID_AT:off + _ID_AT + len(job_id)] = job_id
        m[off] = (seq + 2) & 0xFF or 2  # even and non-zero: in use

    def clear(self, index: int) -> None:
        off = index * ENTRY
        m = self.map
        m[off] = (m[off] + 1) & 0xFF
        m[off + _ID_AT - 1] = 0  # id length 0: free
        m[off] = (m[off] + 1) & 0xFF

    # -- supervisor side ----------------------------------------------------------------
    def read(self) -> dict[str, float | None]:
        """Started job id -> hard deadline (None: no time limit)."""
        out: dict[str, float | None] = {}
        m = self.map
        for i in range(self.entries):
            off = i * ENTRY
            for _ in range(100):
                s1 = m[off]
                if s1 & 1:
                    continue  # being written (or the child died writing: not started)
                d, n = _FIELDS.unpack_from(m, off + 1)
                raw = m[off + _ID_AT:off + _ID_AT + n] if n else b""
                if m[off] == s1:
                    if raw:
                        out[raw.decode()] = None if math.isnan(d) else d
                    break
        return out

    def close(self) -> None:
        self.map.close()


class Reporter:
    def __init__(self, fd: int | None, table_fd: int | None = None) -> None:
        self.fd = fd
        self._lock = threading.Lock()
        self.table = StartedTable(table_fd) if table_fd is not None and fd is not None \
            else None
        self._free = list(range(self.table.entries - 1, -1, -1)) if self.table else []
        self._slot: dict[str, int] = {}  # job id -> its entry
        self._unsent: list[str] = []  # H lines not written yet (see the module docstring)

    def _write(self, line: str | None = None) -> None:
        """Write the unsent H lines, then ``line``."""
        if self.fd is None:
            return
        with self._lock:
            lines, self._unsent = self._unsent, []
            if line is not None:
                lines.append(line)
            if not lines:
                return
            try:
                os.write(self.fd, ("\n".join(lines) + "\n").encode())
            except OSError:
                self.fd = None  # the supervisor is gone; carry on

    def held(self, jobs: Iterable[Job]) -> None:
        """Note leased jobs; written at the next :meth:`flush` or :meth:`done`."""
        if self.fd is not None:
            line = "H " + " ".join(f"{j.id} {j.lease_token}" for j in jobs)
            with self._lock:
                self._unsent.append(line)

    def flush(self) -> None:
        """Write the H lines noted since the last write (the child is about to wait)."""
        if self._unsent:
            self._write()

    def started(self, job: Job, timeout: float | None) -> None:
        if self.fd is None:
            return
        deadline = time.time() + timeout if timeout else None
        raw = job.id.encode()
        index = None
        if self.table is not None and len(raw) <= _ID_MAX:
            with self._lock:
                if self._free:
                    index = self._free.pop()
                    self._slot[job.id] = index
        if index is None:
            self._write(f"S {job.id} {'-' if deadline is None else f'{deadline:.3f}'}")
            return
        assert self.table is not None
        self.table.write(index, raw, deadline)

    def done(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if self.fd is None or not ids:
            return
        self._write("D " + " ".join(ids))
        if self.table is not None:  # after the D line: until then they count as started
            with self._lock:
                for job_id in ids:
                    index = self._slot.pop(job_id, None)
                    if index is not None:
                        self.table.clear(index)
                        self._free.append(index)
