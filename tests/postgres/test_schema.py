"""Migrations: the schema is exactly the sum of the migration files, applied once."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from chervil.brokers.postgres import PostgresBroker, migrate
from chervil.brokers.sqlfile import migrations
from tests.conftest import POSTGRES_URL

from .conftest import with_query

EXPECTED = Path(__file__).with_name("expected_schema.txt")


def describe(conn: psycopg.Connection[Any], schema: str) -> str:
    """Tables, columns, constraints, indexes, triggers and functions of ``schema``."""
    queries = [
        ("column", """SELECT table_name || '.' || column_name || ' ' || data_type
                      || CASE WHEN is_nullable = 'NO' THEN ' NOT NULL' ELSE '' END
                      || COALESCE(' DEFAULT ' || column_default, '')
                      FROM information_schema.columns WHERE table_schema = %(s)s"""),
        ("constraint", """SELECT cl.relname || ' ' || c.conname || ' '
                          || pg_get_constraintdef(c.oid)
                          FROM pg_constraint c JOIN pg_class cl ON cl.oid = c.conrelid
                          WHERE c.connamespace = %(s)s::regnamespace"""),
        ("index", """SELECT indexdef FROM pg_indexes WHERE schemaname = %(s)s"""),
        ("trigger", """SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
                       JOIN pg_class c ON c.oid = t.tgrelid
                       WHERE c.relnamespace = %(s)s::regnamespace AND NOT t.tgisinternal"""),
        ("function", """SELECT p.proname || ' ' || md5(p.prosrc) || ' '
                        || array_to_string(p.proconfig, ',')
                        FROM pg_proc p WHERE p.pronamespace = %(s)s::regnamespace"""),
    ]
    lines = []
    for kind, query in queries:
        for (text,) in conn.execute(query, {"s": schema}):  # type: ignore[arg-type]
            lines.append(f"{kind} {text}".replace(schema, "<schema>"))
    return "\n".join(sorted(lines)) + "\n"


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        yield conn


def test_schema_is_the_sum_of_the_migrations(url: str, schema: str,
                                             admin: psycopg.Connection[Any]) -> None:
    numbers = [n for n, _ in migrations("postgres")]
    assert numbers == list(range(1, len(numbers) + 1)), "migrations are numbered 1, 2, 3..."
    assert migrate(url) == numbers
    got = describe(admin, schema)
    if os.environ.get("CHERVIL_WRITE_EXPECTED_SCHEMA"):
        EXPECTED.write_text(got)
    assert got == EXPECTED.read_text(), (
        "the schema differs from tests/postgres/expected_schema.txt; if a new migration "
        "meant it, rerun with CHERVIL_WRITE_EXPECTED_SCHEMA=1 and review the diff")


def test_one_by_one_equals_all_at_once(url: str, schema: str,
                                       admin: psycopg.Connection[Any]) -> None:
    migrate(url)
    other = schema + "_steps"
    try:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(other)))
        for _, script in migrations("postgres"):
            with admin.transaction():
                admin.execute(sql.SQL("SET LOCAL search_path TO {}")
                              .format(sql.Identifier(other)))
                admin.execute(script.encode())
        steps = describe(admin, other).replace("<schema>_steps", "<schema>")
        migrations_table = [ln for ln in describe(admin, schema).splitlines()
                            if "migrations" not in ln]
        assert steps.splitlines() == migrations_table
    finally:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


def test_migrate_is_idempotent_and_recorded(url: str, schema: str,
                                            admin: psycopg.Connection[Any]) -> None:
    numbers = [n for n, _ in migrations("postgres")]
    assert migrate(url) == numbers
    assert migrate(url) == []
    versions = admin.execute(sql.SQL("SELECT version FROM {}.migrations ORDER BY version")
                             .format(sql.Identifier(schema))).fetchall()
    assert versions == [(n,) for n in numbers]


def test_concurrent_migrations_apply_once(url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [[]] * 5 + [[n for n, _ in migrations("postgres")]]


def test_broker_migrates_on_first_use_in_its_own_schema(url: str, schema: str,
                                                        admin: psycopg.Connection[Any],
                                                        broker: PostgresBroker) -> None:
    assert broker.get("nothing") is None
    tables = {r[0] for r in admin.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
        (schema,))}
    assert {"jobs", "queues", "workers", "leases", "terminal_counts", "migrations"} <= tables


def test_odd_schema_names_are_quoted(admin: psycopg.Connection[Any]) -> None:
    name = 'chervil test"; DROP TABLE x; --'
    try:
        assert migrate(with_query(POSTGRES_URL, "schema=" + name.replace(" ", "%20")
                                  .replace('"', "%22").replace(";", "%3B"))) == [
            n for n, _ in migrations("postgres")]
        found = admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))
        assert found.fetchone() == (1,)
    finally:
        admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
