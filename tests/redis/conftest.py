from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis.server import RedisServer


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (persistence off), stopped afterwards."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
