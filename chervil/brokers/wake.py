"""Wake-ups between processes on one host, for brokers that cannot block (SQLite).

Each waiting worker binds a Unix datagram socket in a directory named after the
database; a producer, after its commit, sends one byte to every socket there. A full
socket buffer means a wake-up is already pending, and a socket whose owner died is
removed by the next sender. Waiters still time out, so a lost datagram only delays a
job to the end of the timeout.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import tempfile
import threading


def wake_dir(db_path: str) -> str:
    digest = hashlib.sha256(os.path.realpath(db_path).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"chervil-wake-{digest}")


class Waker:
    """Send side: notify every waiter of one database."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._mtime = -1
        self._names: list[str] = []
        self._lock = threading.Lock()

    def notify(self) -> None:
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except FileNotFoundError:
            return
        with self._lock:
            if mtime != self._mtime:
                self._names = os.listdir(self.directory)
                self._mtime = mtime
            names = self._names
            for name in names:
                path = os.path.join(self.directory, name)
                try:
                    self._sock.sendto(b"!", path)
                except BlockingIOError:
                    pass  # its buffer is full: a wake-up is already pending
                except OSError as exc:
                    if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                        with contextlib.suppress(OSError):
                            os.unlink(path)  # its owner is gone

    def close(self) -> None:
        self._sock.close()


class Waiter:
    """Receive side: one socket per waiting thread."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, f"{os.getpid()}-{threading.get_ident()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)

    def wait(self, timeout: float) -> bool:
        """Block until a wake-up or ``timeout``; True if woken.

        Wake-ups that queued up meanwhile are consumed too: they all happened before
        the caller's next look for work, which covers them.
        """
        self._sock.settimeout(max(timeout, 0.0))
        try:
            self._sock.recv(64)
        except (TimeoutError, BlockingIOError):
            return False
        self._sock.setblocking(False)
        try:
            while True:
                self._sock.recv(64)
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
