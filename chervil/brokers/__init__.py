"""Broker backends behind one contract (``base.Broker``), chosen by URL scheme."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..clock import Clock
from ..errors import ConfigurationError
from .base import Broker

SCHEMES = {
    "sqlite": "sqlite",
    "redis": "redis", "rediss": "redis", "unix": "redis",
    "postgres": "postgres", "postgresql": "postgres",
}
EXTRAS = {"redis": "chervil[redis]", "postgres": "chervil[postgres]"}


def broker_module(url: str) -> ModuleType:
    """The backend module a URL names, imported with its driver; nothing is opened.

    A worker's supervisor calls it before forking its children, so that they inherit the
    driver already imported (psycopg and its pool: about 90 ms of start per child).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise ConfigurationError(
            f"broker URL {url!r} has an unknown scheme; use sqlite:///path.db, "
            "redis://host:6379/0 or postgresql://host/dbname")
    try:
        return importlib.import_module(f"chervil.brokers.{kind}")
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("redis", "psycopg", "psycopg_pool"):
            raise ConfigurationError(
                f"the {kind} broker needs its extra: pip install '{EXTRAS[kind]}'") from exc
        raise


def open_broker(url: str, clock: Clock | None = None) -> Broker:
    """Open the broker a URL names: sqlite:///file.db, redis://..., postgresql://..."""
    broker: Broker = broker_module(url).from_url(url, clock)
    return broker
