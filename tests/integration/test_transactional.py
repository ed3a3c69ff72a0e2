"""Jobs exist if and only if the app's transaction committed: SQLite, PostgreSQL
(psycopg and SQLAlchemy), and Redis through the outbox with its relay killed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chervil import Chervil, JobStatus
from tests.conftest import POSTGRES_URL, REDIS_URL, postgres_available, redis_available

from . import itapp
from .conftest import HERE, Env, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_schema() -> Iterator[str]:
    postgres_available()
    import psycopg

    name = "chervil_tx_" + uuid.uuid4().hex[:10]
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_sqlite_enqueue_inside_the_apps_transaction(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    app = itapp.build(f"sqlite:///{db}")
    probe = app.tasks["probe"]
    probe.enqueue("warm-up")  # creates the schema
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO orders VALUES (1)")
    kept = probe.enqueue("kept", connection=conn)  # type: ignore[call-arg]
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO orders VALUES (2)")
    gone = probe.enqueue("gone", connection=conn)  # type: ignore[call-arg]
    conn.execute("ROLLBACK")
    assert kept.status() is JobStatus.QUEUED
    assert app.broker.get(gone.id) is None
    conn.close()
    app.close()


def test_postgres_psycopg_and_sqlalchemy(pg_schema: str) -> None:
    import psycopg
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    url = f"{POSTGRES_URL}?schema={pg_schema}"
    app = itapp.build(url)
    probe = app.tasks["probe"]
    with psycopg.connect(POSTGRES_URL) as conn:
        committed = probe.enqueue("c", connection=conn)  # type: ignore[call-arg]
        assert app.broker.get(committed.id) is None  # not visible before the commit
        conn.commit()
        rolled = probe.enqueue("r", connection=conn)  # type: ignore[call-arg]
        conn.rollback()
    assert committed.status() is JobStatus.QUEUED and app.broker.get(rolled.id) is None
    engine = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    with Session(engine) as session:
        session.execute(text("SELECT 1"))
        orm_kept = probe.enqueue("orm-kept", connection=session)  # type: ignore[call-arg]
        session.commit()
        orm_gone = probe.enqueue("orm-gone", connection=session)  # type: ignore[call-arg]
        session.rollback()
    engine.dispose()
    assert orm_kept.status() is JobStatus.QUEUED and app.broker.get(orm_gone.id) is None
    app.close()


def _transactions(app: Chervil, open_conn: Callable[[], object], n: int,
                  seed: int) -> tuple[set[str], set[str]]:
    """n app transactions, each enqueuing one job, about half rolled back."""
    rng = random.Random(seed)
    probe = app.tasks["probe"]
    committed, rolled_back = set(), set()
    conn = open_conn()
    for i in range(n):
        handle = probe.enqueue(f"tx{i}", connection=conn)  # type: ignore[call-arg]
        if rng.random() < 0.5:
            conn.commit()  # type: ignore[attr-defined]
            committed.add(handle.id)
        else:
            conn.rollback()  # type: ignore[attr-defined]
            rolled_back.add(handle.id)
    conn.close()  # type: ignore[attr-defined]
    return committed, rolled_back


def _runs(e: Env) -> Counter[str]:
    return Counter(r[0] for r in e.ledger() if r[1].startswith("tx"))


def test_thousand_postgres_transactions_run_exactly_when_committed(
        env: Callable[..., Env], pg_schema: str) -> None:
    import psycopg

    url = f"{POSTGRES_URL}?schema={pg_schema}"
    e = env(broker_url=url)
    app = e.app()
    e.worker("-p", "1", "-t", "4")
    committed, rolled_back = _transactions(app, lambda: psycopg.connect(POSTGRES_URL), 1000,
                                           seed=4)
    wait_for(lambda: set(_runs(e)) >= committed, timeout=60, what="committed jobs to run")
    runs = _runs(e)
    assert set(runs) == committed and all(n == 1 for n in runs.values())
    assert not rolled_back & set(runs)
    assert all(app.broker.get(i) is None for i in list(rolled_back)[:50])


def test_redis_outbox_relay_killed_twice(env: Callable[..., Env], tmp_path: Path) -> None:
    redis_available()
    prefix = "chervil-outbox-" + uuid.uuid4().hex[:8]
    url = f"{REDIS_URL}?prefix={prefix}"
    appdb = tmp_path / "appdata.db"
    e = env(broker_url=url)
    app = e.app()
    app.settings = app.settings.replace(outbox_url=f"sqlite:///{appdb}")
    outbox = app.outbox()
    outbox.ensure_schema()
    e.worker("-p", "1", "-t", "4")  # no outbox_url: this worker does not relay

    def relay(crash: str | None = None) -> object:
        env_ = {**e.env, "CHERVIL_OUTBOX_URL": f"sqlite:///{appdb}",
                "CHERVIL_SCHEDULER_LEASE_SECONDS": "1"}
        if crash:
            env_["CHERVIL_CRASH_AT"] = crash
        p = subprocess.Popen([sys.executable, "-m", "chervil.cli", "relay", "itapp:app",
                              "--log-level", "WARNING"], env=env_, cwd=str(HERE))
        e.procs.append(p)
        return p

    def open_app_db() -> sqlite3.Connection:
        return sqlite3.connect(appdb, timeout=60)

    first = relay(crash="relay_enqueued")  # dies between enqueue and delete, once
    committed, rolled_back = _transactions(app, open_app_db, 500, seed=5)
    assert first.wait(timeout=30) == 86  # type: ignore[attr-defined]
    second = relay()
    wait_for(lambda: len(_runs(e)) > 50, timeout=60, what="some relayed jobs to run")
    os.kill(second.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    more, more_rolled = _transactions(app, open_app_db, 500, seed=6)
    committed |= more
    rolled_back |= more_rolled
    relay()
    wait_for(lambda: set(_runs(e)) >= committed, timeout=90, what="every committed job")
    runs = _runs(e)
    assert set(runs) == committed and all(n == 1 for n in runs.values()), \
        "a committed job ran twice or not at all"
    assert not rolled_back & set(runs)
    wait_for(lambda: outbox.pending() == 0, what="an empty outbox")
    outbox.close()
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()
