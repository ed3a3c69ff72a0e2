"""Real worker processes against a SQLite file in a temp dir."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chervil import Chervil
from tests.conftest import POSTGRES_URL, REDIS_URL, postgres_available, redis_available

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


class Env:
    def __init__(self, tmp: Path, **settings: str) -> None:
        self.db = tmp / "broker.db"
        self.ledger_path = tmp / "ledger.db"
        self.env = {**os.environ, "CHERVIL_BROKER_URL": f"sqlite:///{self.db}",
                    "CHERVIL_TEST_LEDGER": str(self.ledger_path),
                    "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
        for k, v in settings.items():
            self.env[f"CHERVIL_{k.upper()}"] = v
        self.procs: list[subprocess.Popen[bytes]] = []
        self.apps: list[Chervil] = []
        self.logs: list[Path] = []
        self.tmp = tmp

    def app(self) -> Chervil:
        """The integration app, seen from this (producer) process."""
        from tests.integration import itapp

        a = itapp.build(self.env["CHERVIL_BROKER_URL"])
        self.apps.append(a)
        return a

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "chervil.cli", "worker", "itapp:app", *args],
                env=self.env, cwd=str(HERE), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.procs.append(proc)
        return proc

    def spawn(self, code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code], env=self.env, cwd=str(HERE))
        self.procs.append(proc)
        return proc

    def ledger(self) -> list[tuple[Any, ...]]:
        if not self.ledger_path.exists():
            return []
        conn = sqlite3.connect(self.ledger_path, timeout=60)
        try:
            return conn.execute("SELECT job, key, event, attempt, pid FROM ledger").fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            conn.close()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def close(self) -> None:
        for a in self.apps:
            a.close()
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
                p.wait()


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []

    def make(**settings: str) -> Env:
        e = Env(tmp_path, **settings)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


@pytest.fixture(params=["sqlite", "redis", "postgres"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh namespace on each broker, removed afterwards."""
    name = uuid.uuid4().hex[:10]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sched.db"
    elif request.param == "redis":
        redis_available()
        yield f"{REDIS_URL}?prefix=chervil-sched-{name}"
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"chervil-sched-{name}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
    else:
        postgres_available()
        yield f"{POSTGRES_URL}?schema=chervil_sched_{name}"
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "chervil_sched_{name}" CASCADE')
