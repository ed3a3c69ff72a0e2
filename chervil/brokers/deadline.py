"""Client-side deadlines for database calls that a silent network could hang for ever.

A connection whose server stopped answering, behind a middlebox that keeps the TCP
connection open, blocks its caller with no error: keepalives are answered, nothing
times out. ``Deadlines`` watches the calls in flight and shuts the socket of one that
outlives its deadline, so the blocked driver call fails at once with a connection error
(which brokers report as ``BrokerUnavailable``) and the connection is thrown away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator

log = logging.getLogger("chervil.broker")


class Deadlines:
    def __init__(self, seconds: float, what: str) -> None:
        self.seconds = seconds
        self.what = what
        self._calls: dict[int, tuple[int, float]] = {}  # call id -> (socket fd, deadline)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next = 0

    @contextlib.contextmanager
    def guard(self, fd: int) -> Iterator[None]:
        """Run the body with socket ``fd`` cut if it is still running after the deadline."""
        with self._lock:
            self._next += 1
            key = self._next
            self._calls[key] = (fd, time.monotonic() + self.seconds)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, daemon=True,
                                                name="chervil-deadlines")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._calls.pop(key, None)

    def _watch(self) -> None:
        interval = min(1.0, self.seconds / 4)
        while True:
            time.sleep(interval)
            now = time.monotonic()
            with self._lock:
                overdue = [(k, fd) for k, (fd, end) in self._calls.items() if now > end]
                for k, _ in overdue:
                    del self._calls[k]
            for _, fd in overdue:
                log.warning("%s call without an answer for %.0f s: cutting its connection",
                            self.what, self.seconds)
                _shutdown(fd)


def _shutdown(fd: int) -> None:
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        s = socket.socket(fileno=dup)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
    except OSError:
        os.close(dup)
