"""Cron schedules: when they fire (pure), and the loop that enqueues each fire once.

Fire times follow the wall clock of the schedule's time zone, and DST is handled the way
operators expect:

- a wall time that does not exist (the hour skipped in spring) fires at the same wall
  time read with the offset before the change, i.e. shifted forward by the gap;
- a wall time that happens twice (the hour repeated in autumn) fires once, at its first
  occurrence, unless the expression repeats within the hour anyway (hour field ``*``):
  then both passes are real ticks and both fire.

Each fire is enqueued with a deterministic job id and the unique key
``cron:<name>:<fire time>``, so any number of schedulers, restarts or crashes between
computing a tick and recording it still yield one job per tick. One scheduler at a time
does the work, under the broker lease ``chervil:scheduler``; another takes over within
the lease's TTL when the holder dies.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigurationError
from .faults import crash_point

if TYPE_CHECKING:
    from .app import Chervil
    from .task import Task

log = logging.getLogger("chervil.scheduler")

SCHEDULER_LEASE = "chervil:scheduler"


def _croniter() -> Any:
    try:
        from croniter import croniter
    except ImportError:  # pragma: no cover - a declared dependency
        raise ConfigurationError("cron schedules need croniter: pip install croniter") from None
    return croniter


@dataclass(frozen=True)
class Cron:
    """A cron expression (5 fields, or 6 with seconds last) in a time zone."""

    expression: str
    tz: str = "UTC"

    def __post_init__(self) -> None:
        if not _croniter().is_valid(self.expression):
            raise ConfigurationError(
                f"cron expression {self.expression!r} is not valid; write 5 fields "
                "(minute hour day month weekday) like '*/5 * * * *'")
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"unknown time zone {self.tz!r}; use an IANA name like 'Europe/Paris'") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @property
    def _hourly(self) -> bool:
        """True when the expression repeats within an hour (its hour field is ``*``)."""
        return self.expression.split()[1] == "*"

    def next_after(self, after: float) -> float:
        """The first fire time strictly after ``after`` (epoch seconds)."""
        zone = self.zone
        local = datetime.fromtimestamp(after, zone).replace(tzinfo=None)
        start = local - timedelta(seconds=1)
        if (datetime.fromtimestamp(after - 7200, zone).utcoffset()
                != datetime.fromtimestamp(after + 7200, zone).utcoffset()):
            start = local - timedelta(hours=1, seconds=1)  # a repeated hour may hold ticks
        it = _croniter()(self.expression, start)
        best: float | None = None
        while True:
            wall: datetime = it.get_next(datetime)
            instants = self._instants(wall, zone)
            if best is not None and min(instants) > best:
                return best  # later wall times only map to later instants
            for instant in instants:
                if instant > after and (best is None or instant < best):
                    best = instant

    def fires_between(self, start: float, end: float, limit: int = 1000) -> list[float]:
        """Fire times in (start, end], oldest first, at most ``limit`` (the newest kept)."""
        out: list[float] = []
        t = start
        while True:
            t = self.next_after(t)
            if t > end:
                return out[-limit:]
            out.append(t)
            if len(out) > 2 * limit:
                out = out[-limit:]

    def _instants(self, wall: datetime, zone: ZoneInfo) -> list[float]:
        first = wall.replace(tzinfo=zone, fold=0)
        second = wall.replace(tzinfo=zone, fold=1)
        t0, t1 = first.timestamp(), second.timestamp()
        if t0 == t1:
            return [t0]
        exists = datetime.fromtimestamp(t0, zone).replace(tzinfo=None) == wall
        if not exists:  # skipped by a spring-forward change: shift forward by the gap
            return [max(t0, t1)]
        return [t0, t1] if self._hourly else [min(t0, t1)]


def fire_id(name: str, fire_at: float) -> str:
    """A deterministic, time-sortable (UUIDv7-shaped) job id for one fire of a schedule."""
    ms = int(fire_at * 1000) & ((1 << 48) - 1)
    digest = int.from_bytes(hashlib.sha256(f"{name}\0{fire_at!r}".encode()).digest()[:10], "big")
    value = (ms << 80) | (0x7 << 76) | (((digest >> 62) & 0xFFF) << 64) | (0b10 << 62)
    value |= digest & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def fire_key(name: str, fire_at: float) -> str:
    iso = datetime.fromtimestamp(fire_at, UTC).isoformat(timespec="milliseconds")
    return f"cron:{name}:{iso}"


@dataclass(frozen=True)
class Schedule:
    """A task fired by a cron expression with fixed arguments.

    ``misfire`` decides what happens to fires missed while no scheduler ran:
    ``"skip"`` (only fire if the latest missed fire is within ``grace_seconds``),
    ``"once"`` (fire the latest missed one), or an int N (catch up the last N).
    """

    name: str
    task: Task[Any, Any]
    cron: Cron
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    misfire: str | int = "once"
    grace_seconds: float = 60.0

    def __post_init__(self) -> None:
        if not (self.misfire in ("skip", "once") or (isinstance(self.misfire, int)
                                                      and self.misfire >= 1)):
            raise ConfigurationError(
                f"schedule {self.name}: misfire={self.misfire!r}; use 'skip', 'once' or a "
                "positive number of fires to catch up")
        self.task.signature.bind(*self.args, **self.kwargs)  # TypeError now, not at 3 a.m.

    def due(self, last: float | None, now: float) -> tuple[list[float], float | None]:
        """(fires to enqueue now, new mark) given the last mark and the time now."""
        if last is None:
            return [], now  # a new schedule starts from now: nothing is missed yet
        missed = self.cron.fires_between(last, now, limit=max(
            1, self.misfire if isinstance(self.misfire, int) else 1))
        if not missed:
            return [], None
        if self.misfire == "skip":
            fires = [f for f in missed[-1:] if now - f <= self.grace_seconds]
        else:
            fires = missed
        return fires, missed[-1]


class Scheduler:
    """Enqueue due fires of an app's schedules, one scheduler active at a time."""

    def __init__(self, app: Chervil, owner: str, lease_seconds: float | None = None,
                 on_fire: Callable[[Schedule, float], None] | None = None) -> None:
        self.app = app
        self.owner = owner
        self.lease_seconds = lease_seconds or app.settings.scheduler_lease_seconds
        self.on_fire = on_fire
        self.active = False

    def tick(self) -> int:
        """One round: take or renew the lease; if held, enqueue every due fire."""
        broker = self.app.broker
        held = broker.acquire_lease(SCHEDULER_LEASE, self.owner, self.lease_seconds)
        if held != self.active:
            log.info("scheduler %s %s the lead", self.owner, "took" if held else "lost")
            self.active = held
        if not held:
            return 0
        now = self.app.clock.now()
        marks = broker.schedule_marks()
        fired = 0
        for sched in self.app.schedules.values():
            fires, mark = sched.due(marks.get(sched.name), now)
            if fires:
                crash_point("scheduler_tick")
                self.app.enqueue_many([self.prepare(sched, f) for f in fires])
                fired += len(fires)
                for f in fires:
                    if self.on_fire:
                        self.on_fire(sched, f)
            if mark is not None:
                broker.mark_schedule(sched.name, mark)
        return fired

    @staticmethod
    def prepare(sched: Schedule, fire_at: float, manual: bool = False) -> Any:
        prepared = sched.task.prepare(*sched.args, **sched.kwargs)
        from dataclasses import replace

        name = f"{sched.name}:manual" if manual else sched.name
        return replace(prepared, new_job=replace(
            prepared.new_job, id=fire_id(name, fire_at), unique_key=fire_key(name, fire_at),
            unique_mode="window", unique_until=fire_at + 7 * 86400.0))

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Tick until ``stop`` is set; broker errors are logged and retried."""
        interval = interval or min(1.0, self.lease_seconds / 4)
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:
                log.warning("scheduler tick failed (%s: %s); retrying", type(exc).__name__, exc)
            stop.wait(interval)
        if self.active:
            try:
                self.app.broker.release_lease(SCHEDULER_LEASE, self.owner)
            except Exception:  # the lease expires by itself
                log.debug("could not release the scheduler lease", exc_info=True)


def next_fires(schedules: Sequence[Schedule], now: float) -> dict[str, float]:
    return {s.name: s.cron.next_after(now) for s in schedules}
