"""PostgreSQL-only fixtures: each test gets its own schema, dropped afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from chervil.brokers.postgres import PostgresBroker, from_url
from chervil.clock import Clock, FakeClock
from tests.conftest import POSTGRES_URL, postgres_available


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
def schema(unique_name: str) -> Iterator[str]:
    postgres_available()
    name = f"chervil_pgtest_{unique_name}"
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                     .format(psycopg.sql.Identifier(name)))


@pytest.fixture
def url(schema: str) -> str:
    return with_query(POSTGRES_URL, f"schema={schema}")


@pytest.fixture
def make_broker(url: str) -> Iterator[Callable[..., PostgresBroker]]:
    made: list[PostgresBroker] = []

    def make(clock: Clock | None = None, extra: str = "") -> PostgresBroker:
        broker = from_url(with_query(url, extra) if extra else url, clock)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def broker(make_broker: Callable[..., PostgresBroker], clock: FakeClock) -> PostgresBroker:
    return make_broker(clock)


@pytest.fixture
def conn() -> Iterator[psycopg.Connection[Any]]:
    """A plain connection of the test's own (not autocommit), like an application's."""
    postgres_available()
    with psycopg.connect(POSTGRES_URL) as c:
        yield c
