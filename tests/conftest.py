"""Shared fixtures: server URLs, and the rule that CI fails rather than skips."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("CHERVIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("CHERVIL_TEST_POSTGRES_URL", "postgresql://127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_missing(what: str, exc: BaseException) -> None:
    """Skip locally, fail in CI: a test that needs a server must run there."""
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if IN_CI:
        pytest.fail(message + "; CI must start it (see .ci/run)")
    pytest.skip(message)


def redis_available() -> None:
    try:
        import redis
    except ImportError as exc:
        server_missing("redis-py", exc)
        return
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        server_missing(f"Redis at {REDIS_URL}", exc)


def postgres_available() -> None:
    try:
        import psycopg
    except ImportError as exc:
        server_missing("psycopg", exc)
        return
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
    except Exception as exc:
        server_missing(f"PostgreSQL at {POSTGRES_URL}", exc)


@pytest.fixture
def unique_name() -> Iterator[str]:
    yield "t" + uuid.uuid4().hex[:12]


def drop_namespace(kind: str, name: str) -> None:
    """Remove what a test left on a shared server: the Redis keys under prefix ``name``,
    or the PostgreSQL schema ``name``. Nothing to do for SQLite (a temp file)."""
    if kind == "redis":
        import redis

        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"{name}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
    elif kind == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
