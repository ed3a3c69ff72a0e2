"""T-04: the broker goes away under load and comes back.

Redis: our own ``redis-server`` (``--appendonly yes --appendfsync always``, a free
loopback port) is SIGKILLed and restarted on the same AOF. PostgreSQL: the shared
server stays up; the workers and producers reach it through a TCP proxy run here, which
is cut (every connection reset, new ones refused) and restored. SQLite: every chervil
process is SIGKILLed mid-write, then ``PRAGMA integrity_check`` must be ok.

Pass: enqueue either returns after the commit or raises (never success without a commit:
nothing that returned is lost); workers resume by themselves (no child dies, no restart);
the checker's zeros.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_URL

from .harness import TERMINAL, Cluster, check, new_seed, read_produced, wait_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drain_and_check(c: Cluster, timeout: float = 90.0) -> tuple[object, set[str], set[str]]:
    _, ok, failed = read_produced(c.producer_logs)
    broker = c.broker()
    wait_for(lambda: all((j := broker.get(i)) is not None and j.status in TERMINAL
                         for i in ok), timeout=timeout, what="every job to end", every=0.5)
    report = check(c)
    print(report.table())
    return report, ok, failed


def load(c: Cluster, seconds: float, rate: float = 20.0) -> list[subprocess.Popen[bytes]]:
    return [c.producer(f"p{i}-{time.monotonic_ns()}", int(rate * seconds), rate,
                       batch=1 if i == 0 else 4) for i in range(2)]


def outages_under_load(c: Cluster, rng: random.Random, rounds: int, what: str,
                       down: Callable[[], object], up: Callable[[], object],
                       where: str, drain_timeout: float = 90.0) -> None:
    """Two workers and two producers; take the broker down and up ``rounds`` times; then
    every job must end right, and the workers must have carried on by themselves."""
    ws = [c.worker("-p", "1", "-t", "4", "--no-scheduler") for _ in range(2)]
    producers = load(c, 16)
    for _ in range(rounds):
        time.sleep(rng.uniform(2.0, 3.0))
        c.faults.record("broker_down", what, [])
        down()
        time.sleep(rng.uniform(1.0, 3.0))
        up()
        c.faults.record("broker_up", what, [])
    for p in producers:
        p.wait(timeout=90)
    report, ok, failed = drain_and_check(c, timeout=drain_timeout)
    assert report.violations() == {}, where  # type: ignore[attr-defined]
    assert len(ok) > 300, where
    assert all(w.poll() is None for w in ws), where
    assert "died with exit code" not in c.log_text(), where
    print(f"  enqueue raised during outages: {len(failed)}")


# -- Redis -----------------------------------------------------------------------------
class RedisServer:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "redis"
        self.dir.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--dir", str(self.dir), "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        def up() -> bool:
            try:
                return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        wait_for(up, timeout=20, what="redis-server to answer")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.mark.timeout(180)
def test_redis_killed_and_restarted_under_load(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    from tests.conftest import redis_available

    redis_available()  # the driver
    server = RedisServer(tmp_path)
    server.start()
    seed = new_seed()
    rng = random.Random(seed)
    c = Cluster(tmp_path, f"redis://127.0.0.1:{server.port}/0?prefix=rr", seed)
    try:
        outages_under_load(c, rng, 3, "redis-server", server.kill, server.start,
                           f"seed {seed}; logs in {tmp_path}")
    finally:
        c.close()
        server.kill()


# -- PostgreSQL: a private server stopped with -m immediate and started again ----------
PG_BIN = Path("/usr/lib/postgresql")


def _pg_bin(name: str) -> str | None:
    found = sorted(PG_BIN.glob(f"*/bin/{name}")) if PG_BIN.exists() else []
    return str(found[-1]) if found else shutil.which(name)


class PostgresServer:
    """Our own PostgreSQL (initdb in the test's folder, run as the postgres user when we
    are root), so it can be stopped hard without touching the shared server."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "pgdata"
        self.sock = tmp / "pgsock"
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.pg_ctl = pg_ctl
        self.sock.mkdir()
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            self.prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(tmp, "postgres")
            shutil.chown(self.sock, "postgres")
        subprocess.run([*self.prefix, initdb, "-D", str(self.dir), "-A", "trust", "-U",
                        "postgres", "--no-sync"], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=on"
        subprocess.run([*self.prefix, self.pg_ctl, "-D", str(self.dir), "-o", opts, "-w",
                        "-l", str(self.dir.parent / "pg.log"), "start"], check=True,
                       capture_output=True, timeout=120)

    def stop_immediate(self) -> None:
        subprocess.run([*self.prefix, self.pg_ctl, "-D", str(self.dir), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)

    def url(self, schema: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema={schema}"


@pytest.mark.timeout(240)
def test_postgres_stopped_immediately_and_restarted_under_load(tmp_path: Path) -> None:
    from tests.conftest import postgres_available

    postgres_available()  # the driver
    # outside pytest's folder, which the postgres user may not enter
    work = Path(tempfile.mkdtemp(prefix="chervil-pg-"))
    server = PostgresServer(work)
    server.start()
    seed = new_seed()
    rng = random.Random(seed)
    c = Cluster(tmp_path, server.url("chervil_restart") + "&call_timeout=10", seed)
    try:
        outages_under_load(c, rng, 2, "postgres -m immediate", server.stop_immediate,
                           server.start, f"seed {seed}; logs in {tmp_path}")
    finally:
        c.close()
        server.stop_immediate()
        shutil.rmtree(work, ignore_errors=True)


# -- PostgreSQL through a proxy we can cut ---------------------------------------------
RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close sends RST


class Proxy:
    """A TCP forwarder on a free loopback port; ``cut`` resets every connection and
    refuses new ones until ``restore``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(128)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                s.close()

    def close(self) -> None:
        self.cut()


@pytest.mark.timeout(180)
def test_postgres_outage_through_a_cut_proxy(tmp_path: Path) -> None:
    from tests.conftest import postgres_available

    from .harness import destroy

    postgres_available()
    from urllib.parse import urlparse

    target = urlparse(POSTGRES_URL)
    proxy = Proxy((target.hostname or "127.0.0.1", target.port or 5432))
    seed = new_seed()
    rng = random.Random(seed)
    name = f"out{seed}"
    url = (f"postgresql://{target.hostname}:{proxy.port}{target.path}"
           f"?schema=chervil_rel_{name}&call_timeout=5")
    # A call left hanging by the cut is abandoned after 5 s (call_timeout), and retried.
    c = Cluster(tmp_path, url, seed)
    try:
        outages_under_load(c, rng, 3, "proxy", proxy.cut, proxy.restore,
                           f"seed {seed}; logs in {tmp_path}", drain_timeout=20.0)
    finally:
        c.close()
        proxy.close()
        destroy("postgres", name)


# -- SQLite: every process SIGKILLed mid-write -----------------------------------------
@pytest.mark.timeout(180)
def test_sqlite_every_process_killed_mid_write(tmp_path: Path) -> None:
    seed = new_seed()
    rng = random.Random(seed)
    db = tmp_path / "broker.db"
    c = Cluster(tmp_path, f"sqlite:///{db}", seed)
    try:
        for _ in range(3):
            ws = [c.worker("-p", "1", "-t", "4", "--no-scheduler") for _ in range(2)]
            producers = load(c, 30)
            time.sleep(rng.uniform(3.0, 5.0))
            for p in [*ws, *producers]:
                c.kill_group(p, what="kill_all")
            conn = sqlite3.connect(db, timeout=60)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
        ws = [c.worker("-p", "1", "-t", "4", "--no-scheduler") for _ in range(2)]
        report, ok, failed = drain_and_check(c)
        where = f"seed {seed}; logs in {tmp_path}"
        assert report.violations() == {}, where  # type: ignore[attr-defined]
        assert len(ok) > 200 and failed == set(), where
        conn = sqlite3.connect(db, timeout=60)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
    finally:
        c.close()
