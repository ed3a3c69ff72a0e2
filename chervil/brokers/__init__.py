"""Broker backends behind one contract (``base.Broker``), chosen by URL scheme."""

from __future__ import annotations

import importlib

from ..clock import Clock
from ..errors import ConfigurationError
from .base import Broker

SCHEMES = {
    "sqlite": "sqlite",
    "redis": "redis", "rediss": "redis", "unix": "redis",
    "postgres": "postgres", "postgresql": "postgres",
}
EXTRAS = {"redis": "chervil[redis]", "postgres": "chervil[postgres]"}


def open_broker(url: str, clock: Clock | None = None) -> Broker:
    """Open the broker a URL names: sqlite:///file.db, redis://..., postgresql://..."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise ConfigurationError(
            f"broker URL {url!r} has an unknown scheme; use sqlite:///path.db, "
            "redis://host:6379/0 or postgresql://host/dbname")
    if kind == "sqlite":
        from .sqlite import from_url as sqlite_from_url

        return sqlite_from_url(url, clock)
    try:
        module = importlib.import_module(f"chervil.brokers.{kind}")
        broker: Broker = module.from_url(url, clock)
        return broker
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("redis", "psycopg", "psycopg_pool"):
            raise ConfigurationError(
                f"the {kind} broker needs its extra: pip install '{EXTRAS[kind]}'") from exc
        raise
