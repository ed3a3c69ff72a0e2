"""The child -> supervisor pipe: one line per event, plain text.

    H <id> <token> [<id> <token> ...]    leased these jobs
    S <id> <deadline|->                  started one (deadline: wall-clock hard limit)
    D <id> [<id> ...]                    done with these (finished or handed back)
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from ..job import Job


class Reporter:
    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        if self.fd is None:
            return
        data = (line + "\n").encode()
        with self._lock:
            try:
                os.write(self.fd, data)
            except OSError:
                self.fd = None  # the supervisor is gone; carry on

    def held(self, jobs: Iterable[Job]) -> None:
        if self.fd is not None:
            self._write("H " + " ".join(f"{j.id} {j.lease_token}" for j in jobs))

    def started(self, job: Job, timeout: float | None) -> None:
        if self.fd is not None:
            deadline = f"{time.time() + timeout:.3f}" if timeout else "-"
            self._write(f"S {job.id} {deadline}")

    def done(self, ids: Iterable[str]) -> None:
        if self.fd is not None:
            self._write("D " + " ".join(ids))
