"""Index choices: with many finished rows (and a long backlog), the hot statements stay
small: none reads the finished rows (a sequential scan would count them all).
Plans, not timings: each statement runs under EXPLAIN ANALYZE in a transaction
that is rolled back, and the rows it read from ``jobs`` are counted.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from chervil.brokers.base import NewJob
from chervil.brokers.postgres import PostgresBroker, from_url
from chervil.clock import FakeClock
from chervil.job import new_job_id
from tests.conftest import POSTGRES_URL, postgres_available

from .conftest import with_query

# Finished rows many times the backlog, as in a queue that keeps its history: with 50,000
# the live rows were 30% of the table and queue_stats' plan flipped between the partial
# index and a sequential scan from one ANALYZE sample to the next.
FINISHED = 200_000
BACKLOG = 20_000


@pytest.fixture(scope="module")
def loaded() -> Iterator[PostgresBroker]:
    postgres_available()
    schema = f"chervil_pgtest_plans_{uuid.uuid4().hex[:12]}"
    broker = from_url(with_query(POSTGRES_URL, f"schema={schema}"), FakeClock(1e9))
    try:
        load(broker, schema)
        yield broker
    finally:
        broker.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                         .format(sql.Identifier(schema)))


def load(broker: PostgresBroker, schema: str) -> None:
    broker.get("warm-up")
    insert = sql.SQL(
        "INSERT INTO {}.jobs (id, task, queue, priority, payload, status, created_at, "
        "run_at, finished_at) SELECT %s || lpad(g::text, 10, '0'), 't', "
        "(ARRAY['a', 'b'])[1 + g %% 2], g %% 3, '', (%s::text[])[1 + g %% 4], g, g, "
        "CASE WHEN %s THEN g END FROM generate_series(1, %s) AS g"
    ).format(sql.Identifier(schema))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(insert, ("f", ["succeeded", "succeeded", "dead", "cancelled"], True,
                              FINISHED))
        conn.execute(insert, ("q", ["queued"] * 4, False, BACKLOG))
    broker.enqueue([NewJob(id=new_job_id(), task="t", queue=q, payload=b"{}",
                           run_at=broker.clock.now() + 100) for q in ("a", "b", "c")])
    broker.reserve(["a"], 5, "w", 30)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("ANALYZE {}.jobs").format(sql.Identifier(schema)))


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def rows_read(broker: PostgresBroker, name: str, **params: Any) -> int:
    """Rows the statement read from jobs (heap or index), at every loop."""
    with psycopg.connect(POSTGRES_URL) as conn:
        [[doc]] = conn.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + broker._q[name],
                               broker._params(**params)).fetchall()
        conn.rollback()
    total = 0
    for node in nodes(doc[0]["Plan"]):
        # (a Bitmap Index Scan's rows are counted once, by its Bitmap Heap Scan)
        if node.get("Relation Name") == "jobs" and node["Node Type"] != "ModifyTable":
            total += (node["Actual Rows"] * node["Actual Loops"]
                      + node.get("Rows Removed by Filter", 0)
                      + node.get("Rows Removed by Index Recheck", 0))
    return total


@pytest.mark.parametrize(("name", "params", "budget"), [
    ("reserve", {"queues": ["c", "b", "a"], "limit": 10, "worker": "w", "lease": 30.0,
                 "token": "t", "fast": True, "schema": "s"}, 100),
    ("get", {"id": "f0000000042"}, 2),
    ("next_due", {"queues": ["a"]}, 10),
    ("recover_expired", {"limit": 3, "error": "x"}, 20),
    # by primary key, or through jobs_running: as many rows as jobs run, never the rest
    ("extend", {"ids": ["q0000000001"], "tokens": ["t"], "lease": 1.0}, 20),
    ("finish", {"outcomes": '[["q0000000001","t","succeeded",null,null,null,null]]',
                "n": 1}, 20),
    ("prune_succeeded", {"before": 1e12, "batch": 100}, 1000),
    ("prune_failed", {"before": 1e12, "batch": 100}, 1000),
    ("prune_succeeded", {"before": 2000.0, "batch": 100}, 300),  # few old ones among many
    ("prune_failed", {"before": 2000.0, "batch": 100}, 300),
    # live jobs only: the backlog and a few others, never the finished rows
    ("queue_stats", {}, 2 * BACKLOG + 100),
])
def test_statement_reads_few_rows(loaded: PostgresBroker, name: str, params: dict[str, Any],
                                  budget: int) -> None:
    read = rows_read(loaded, name, **params)
    print(f"{name} read {read} rows")
    assert read <= budget


def test_queue_stats_with_finished_rows(loaded: PostgresBroker) -> None:
    stats = {s.queue: s.counts for s in loaded.queue_stats()}
    quarter, half = FINISHED // 4, BACKLOG // 2
    assert stats["a"] == {"succeeded": quarter, "dead": quarter, "queued": half - 5,
                          "running": 5, "scheduled": 1}
    assert stats["b"] == {"succeeded": quarter, "cancelled": quarter, "queued": half,
                          "scheduled": 1}
