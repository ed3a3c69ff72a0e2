"""Settings: one frozen dataclass, each field with a ``CHERVIL_*`` environment twin.

Units are in the names (``lease_seconds``). Precedence: explicit argument, then the
environment, then the default here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigurationError

DEFAULT_URL = "sqlite:///chervil.db"


@dataclass(frozen=True, slots=True)
class Settings:
    # where jobs live
    broker_url: str = DEFAULT_URL
    # leases and recovery
    lease_seconds: float = 30.0
    max_lost_leases: int = 3
    # messages
    payload_limit_bytes: int = 64 * 1024
    # retention of finished records
    succeeded_retention_seconds: float = 7 * 86400.0
    dead_retention_seconds: float = 30 * 86400.0
    # producers
    enqueue_timeout_seconds: float = 10.0
    # the unknown-task hand-back window (DESIGN §7)
    unknown_task_wait_seconds: float = 300.0
    # the app database holding the outbox, for transactional enqueue with Redis ("": none)
    outbox_url: str = ""
    # a broker call stuck this long (a silent network, a driver hang) restarts the child
    broker_stall_seconds: float = 60.0
    # cron: the scheduler lease (a dead scheduler is replaced within this time)
    scheduler_lease_seconds: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise ConfigurationError(
                    f"setting {f.name} must be positive, got {value!r} "
                    f"(environment variable CHERVIL_{f.name.upper()})")
        if self.lease_seconds < 1:
            raise ConfigurationError(
                f"lease_seconds={self.lease_seconds} is too short for heartbeats to keep up; "
                "use 1 second or more (CHERVIL_LEASE_SECONDS)")

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``overrides``, then ``CHERVIL_*`` variables, then defaults."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            if overrides.get(f.name) is not None:
                values[f.name] = overrides.pop(f.name)
                continue
            raw = env.get(f"CHERVIL_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind: type = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ConfigurationError(
                    f"CHERVIL_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        unknown = {k for k, v in overrides.items() if v is not None}
        if unknown:
            raise ConfigurationError(f"unknown setting(s) {sorted(unknown)}; known: "
                                     f"{[f.name for f in fields(cls)]}")
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)
