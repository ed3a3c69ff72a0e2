"""Unique jobs, locks, concurrency and rate limits: task options -> broker keys.

The broker enforces them atomically (see ``brokers/base.py``); this module only turns a
task's options and one call's bound arguments into the keys and numbers a job carries.

    unique="welcome:{user_id}"                  one job per key while queued or running
    unique_while="queued"                       ... only while waiting
    unique_for=timedelta(hours=1)               ... for a window after enqueue
    lock="account:{account_id}"                 one running job per key, across workers
    concurrency=5, concurrency_key="{tenant}"   at most 5 running (per tenant, or overall)
    rate_limit="100/m", rate_key="{customer}"   a token bucket (per customer, or overall)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .errors import ConfigurationError

_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    per_second: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"100/m"``, ``"10/s"``, ``"5/10s"``, ``"1000/h"``, ``"20/d"``."""
        m = _RATE.match(text)
        if not m or float(m.group(1)) <= 0:
            raise ConfigurationError(
                f"rate_limit={text!r} is not a rate; write COUNT/PERIOD like '100/m', "
                "'10/s', '5/10s', '1000/h' or '20/d'")
        count = float(m.group(1))
        period = (float(m.group(2)) if m.group(2) else 1.0) * _PERIODS[m.group(3)]
        return cls(count / period, max(1.0, count))


@dataclass(frozen=True, slots=True)
class FlowControl:
    """A task's flow-control options, checked once at registration."""

    unique: str | None = None
    unique_while: str = "active"
    unique_for: float | None = None  # seconds
    lock: str | None = None
    concurrency: int | None = None
    concurrency_key: str | None = None
    rate: Rate | None = None
    rate_key: str | None = None

    @classmethod
    def build(cls, task: str, parameters: Any, unique: str | None, unique_while: str,
              unique_for: timedelta | float | None, lock: str | None,
              concurrency: int | None, concurrency_key: str | None,
              rate_limit: str | None, rate_key: str | None) -> FlowControl:
        if unique_while not in ("queued", "active"):
            raise ConfigurationError(
                f"task {task}: unique_while={unique_while!r}; use 'queued' or 'active'")
        if unique_for is not None and unique is None:
            raise ConfigurationError(f"task {task}: unique_for needs a unique= key template")
        if lock is not None and concurrency is not None:
            raise ConfigurationError(
                f"task {task}: give lock= (one at a time per key) or concurrency=, not both")
        if concurrency is not None and concurrency < 1:
            raise ConfigurationError(f"task {task}: concurrency must be 1 or more")
        if concurrency_key is not None and concurrency is None:
            raise ConfigurationError(f"task {task}: concurrency_key needs concurrency=N")
        if rate_key is not None and rate_limit is None:
            raise ConfigurationError(f"task {task}: rate_key needs rate_limit='N/period'")
        for option, template in (("unique", unique), ("lock", lock),
                                 ("concurrency_key", concurrency_key), ("rate_key", rate_key)):
            if template is not None:
                _check_template(task, option, template, parameters)
        window = unique_for.total_seconds() if isinstance(unique_for, timedelta) else unique_for
        if window is not None and window <= 0:
            raise ConfigurationError(f"task {task}: unique_for must be a positive duration")
        return cls(unique, unique_while, window, lock, concurrency, concurrency_key,
                   Rate.parse(rate_limit) if rate_limit else None, rate_key)

    def job_fields(self, task: str, arguments: dict[str, Any], now: float) -> dict[str, Any]:
        """The NewJob fields for one call (``arguments``: bound, defaults applied)."""
        out: dict[str, Any] = {}
        if self.unique is not None:
            out["unique_key"] = self.unique.format(**arguments)
            if self.unique_for is not None:
                out["unique_mode"] = "window"
                out["unique_until"] = now + self.unique_for
            else:
                out["unique_mode"] = self.unique_while
        if self.lock is not None:
            out["limit_key"] = "lock:" + self.lock.format(**arguments)
            out["limit_n"] = 1
        elif self.concurrency is not None:
            suffix = self.concurrency_key.format(**arguments) if self.concurrency_key else ""
            out["limit_key"] = f"concurrency:{task}:{suffix}"
            out["limit_n"] = self.concurrency
        if self.rate is not None:
            suffix = self.rate_key.format(**arguments) if self.rate_key else ""
            out["rate_key"] = f"rate:{task}:{suffix}"
            out["rate_per_second"] = self.rate.per_second
            out["rate_burst"] = self.rate.burst
        return out


def _check_template(task: str, option: str, template: str, parameters: Any) -> None:
    names = {f.split(".")[0].split("[")[0]
             for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = names - set(parameters)
    if missing:
        raise ConfigurationError(
            f"task {task}: {option}={template!r} names {sorted(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not a parameter; parameters: "
            f"{list(parameters)}")
