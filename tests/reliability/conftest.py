"""Fixtures of the reliability tests: a broker namespace per test, a run directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import broker_url, destroy, require

BACKENDS = ["sqlite", "redis", "postgres"]


@dataclass
class Backend:
    kind: str
    name: str
    url: str


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    require(kind)
    name = "r" + uuid.uuid4().hex[:10]
    try:
        yield Backend(kind, name, broker_url(kind, tmp_path, name))
    finally:
        destroy(kind, name)
