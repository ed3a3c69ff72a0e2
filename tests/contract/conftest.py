"""The conformance suite's broker fixture: every test runs once per backend.

Each backend gets a fresh namespace per test (a new SQLite file, a Redis key prefix, a
PostgreSQL schema) and a FakeClock, so tests are independent and move time by hand.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from chervil.brokers import open_broker
from chervil.brokers.base import Broker
from chervil.clock import FakeClock
from tests.conftest import (
    POSTGRES_URL,
    REDIS_URL,
    drop_namespace,
    postgres_available,
    redis_available,
)

BACKENDS = ["sqlite", "redis", "postgres"]


def _with_query(url: str, key: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{key}={value}"


def make_broker(kind: str, clock: FakeClock, tmp_path: os.PathLike[str], name: str) -> Broker:
    if kind == "sqlite":
        return open_broker(f"sqlite:///{os.fspath(tmp_path)}/{name}.db", clock)
    if kind == "redis":
        redis_available()
        return open_broker(_with_query(REDIS_URL, "prefix", f"chervil-test-{name}"), clock)
    postgres_available()
    return open_broker(_with_query(POSTGRES_URL, "schema", f"chervil_test_{name}"), clock)


def destroy(kind: str, broker: Broker, name: str) -> None:
    broker.close()
    drop_namespace(kind, f"chervil-test-{name}" if kind == "redis" else f"chervil_test_{name}")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture(params=BACKENDS)
def broker(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: os.PathLike[str],
           unique_name: str) -> Iterator[Broker]:
    kind = request.param
    if kind != "sqlite":
        mod = "chervil.brokers.redis" if kind == "redis" else "chervil.brokers.postgres"
        try:
            __import__(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                pytest.skip(f"the {kind} broker is not built yet")
            raise
    b = make_broker(kind, clock, tmp_path, unique_name)
    try:
        yield b
    finally:
        destroy(kind, b, unique_name)
