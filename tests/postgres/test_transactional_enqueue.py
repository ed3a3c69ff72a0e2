"""enqueue(jobs, connection=conn): the jobs live and die with the caller's transaction."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from chervil.brokers.base import NewJob
from chervil.brokers.postgres import PostgresBroker
from chervil.errors import ConfigurationError
from chervil.job import JobStatus, new_job_id
from tests.conftest import POSTGRES_URL


def new(**kw: Any) -> NewJob:
    return NewJob(id=new_job_id(), task="app.task", queue="default", payload=b"{}", **kw)


def listener(channel: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(POSTGRES_URL, autocommit=True)
    conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
    return conn


def test_commit_makes_the_jobs_visible_and_reservable(
        broker: PostgresBroker, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TEMP TABLE orders (id int)")  # the application's own work
    conn.execute("INSERT INTO orders VALUES (1)")
    jobs = [new(), new(unique_key="order:1")]
    res = broker.enqueue(jobs, connection=conn)
    assert [r.id for r in res] == [j.id for j in jobs] and not any(r.duplicate for r in res)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # no commit
    assert broker.get(jobs[0].id) is None  # not visible to anyone else yet
    assert broker.reserve(["default"], 10, "w", 30) == []
    conn.commit()
    got = broker.get(jobs[0].id)
    assert got is not None and got.status is JobStatus.QUEUED
    assert {j.id for j in broker.reserve(["default"], 10, "w", 30)} == {j.id for j in jobs}


def test_rollback_removes_the_jobs(broker: PostgresBroker,
                                   conn: psycopg.Connection[Any]) -> None:
    job = new(unique_key="order:2")
    broker.enqueue([job], connection=conn)
    conn.rollback()
    assert broker.get(job.id) is None
    assert broker.reserve(["default"], 10, "w", 30) == []
    assert sum(s.ready for s in broker.queue_stats()) == 0
    # the unique key was never taken
    assert not broker.enqueue([new(unique_key="order:2")])[0].duplicate


def test_the_wake_up_is_sent_at_commit_only(broker: PostgresBroker,
                                            conn: psycopg.Connection[Any]) -> None:
    broker.get("warm-up")  # creates the schema
    with listener(broker.options.channel) as ear:
        broker.enqueue([new()], connection=conn)
        assert list(ear.notifies(timeout=0.3)) == []
        conn.rollback()
        assert list(ear.notifies(timeout=0.3)) == []
        broker.enqueue([new()], connection=conn)
        conn.commit()
        [note] = list(ear.notifies(timeout=10, stop_after=1))
        assert note.payload == "default"


def test_callers_row_factory_and_duplicates_inside_the_transaction(
        broker: PostgresBroker) -> None:
    with psycopg.connect(POSTGRES_URL, row_factory=dict_row) as conn:
        first = broker.enqueue([new(unique_key="k")], connection=conn)[0]
        again = broker.enqueue([new(unique_key="k")], connection=conn)[0]
        assert again.duplicate and again.id == first.id  # sees its own transaction
        conn.commit()
    assert broker.get(first.id) is not None


def test_other_connections_are_refused(broker: PostgresBroker) -> None:
    with closing(sqlite3.connect(":memory:")) as other, \
            pytest.raises(ConfigurationError, match="psycopg"):
        broker.enqueue([new()], connection=other)
