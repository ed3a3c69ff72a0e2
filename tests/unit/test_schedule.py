"""Cron fire times across DST (property tests), misfire policies, one job per tick."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from chervil import Chervil, ConfigurationError, FakeClock
from chervil.schedule import Cron, Scheduler
from chervil.testing import temporary_app

ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "America/Santiago",
         "Asia/Kolkata", "UTC", "Pacific/Chatham"]

minute = st.one_of(st.just("*"), st.integers(0, 59).map(str),
                   st.sampled_from(["*/5", "*/15", "0,30", "10-20", "*/7"]))
hour = st.one_of(st.just("*"), st.integers(0, 23).map(str),
                 st.sampled_from(["2", "1-3", "*/2", "0,2,3"]))
dom = st.sampled_from(["*", "1", "15", "*/10", "28-31"])
month = st.sampled_from(["*", "3", "10,11", "*/3"])
dow = st.sampled_from(["*", "0", "1-5", "6,0"])
expressions = st.builds(lambda *f: " ".join(f), minute, hour, dom, month, dow)
# instants near the 2026 DST changes of the zones above, and ordinary ones
starts = st.one_of(
    st.sampled_from([datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 29, 0, tzinfo=UTC),
                     datetime(2026, 10, 25, 0, tzinfo=UTC), datetime(2026, 11, 1, 5, tzinfo=UTC),
                     datetime(2026, 4, 4, 14, tzinfo=UTC), datetime(2026, 9, 5, 15, tzinfo=UTC),
                     datetime(2026, 4, 5, 12, tzinfo=UTC)]).flatmap(
        lambda d: st.integers(-180, 180).map(lambda m: d + timedelta(minutes=m))),
    st.datetimes(datetime(2025, 1, 1), datetime(2028, 1, 1)).map(
        lambda d: d.replace(tzinfo=UTC)))


def _matches(expr: str, instant: float, zone: ZoneInfo) -> bool:
    wall = datetime.fromtimestamp(instant, zone).replace(tzinfo=None)
    return bool(croniter.match(expr, wall))


@settings(max_examples=150, deadline=None)
@given(expr=expressions, tz=st.sampled_from(ZONES), start=starts)
def test_next_fire_is_later_matches_and_skips_nothing(expr: str, tz: str,
                                                      start: datetime) -> None:
    cron = Cron(expr, tz)
    zone = ZoneInfo(tz)
    after = start.timestamp()
    nxt = cron.next_after(after)
    assert nxt > after
    # it matches the expression in local time, or is a wall time skipped by a DST gap
    # shifted forward by the gap
    if not _matches(expr, nxt, zone):
        before = datetime.fromtimestamp(nxt - 3 * 3600, zone).utcoffset()
        after_change = datetime.fromtimestamp(nxt, zone).utcoffset()
        assert before is not None and after_change is not None and after_change > before
        shifted = datetime.fromtimestamp(nxt, zone).replace(tzinfo=None) - (after_change - before)
        assert croniter.match(expr, shifted), (expr, tz, nxt)
    # nothing in between would have fired: every whole minute in (after, nxt) that
    # matches must be a second pass of a repeated wall time of a non-hourly expression
    if nxt - after <= 86400:
        t = (int(after) // 60 + 1) * 60
        while t < nxt:
            if _matches(expr, t, zone):
                wall = datetime.fromtimestamp(t, zone).replace(tzinfo=None)
                first = wall.replace(tzinfo=zone, fold=0).timestamp()
                assert first != t and expr.split()[1] != "*", (expr, tz, t)
            t += 60
    # fires strictly increase
    assert cron.next_after(nxt) > nxt


def test_dst_examples() -> None:
    paris = ZoneInfo("Europe/Paris")

    def fires(expr: str, start: datetime, n: int) -> list[str]:
        t, out = start.replace(tzinfo=paris).timestamp(), []
        for _ in range(n):
            t = Cron(expr, "Europe/Paris").next_after(t)
            out.append(datetime.fromtimestamp(t, paris).isoformat())
        return out

    # spring forward: 02:30 does not exist on 29 March; it fires at 03:30 CEST once
    assert fires("30 2 * * *", datetime(2026, 3, 28, 12), 2) == [
        "2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"]
    # fall back: a daily 02:30 fires once, a half-hourly one in both passes
    assert fires("30 2 * * *", datetime(2026, 10, 24, 12), 2) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert fires("*/30 * * * *", datetime(2026, 10, 25, 1, 50), 4) == [
        "2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00",
        "2026-10-25T02:00:00+01:00", "2026-10-25T02:30:00+01:00"]


def test_bad_expressions_and_zones() -> None:
    with pytest.raises(ConfigurationError, match="not valid"):
        Cron("61 * * * *")
    with pytest.raises(ConfigurationError, match="time zone"):
        Cron("* * * * *", "Mars/Olympus")


def _app(tmp_path: Path, misfire: str | int) -> tuple[Chervil, FakeClock]:
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    app = temporary_app(tmp_path, clock)

    @app.cron("*/5 * * * *", misfire=misfire, name="report")
    def report(kind: str = "daily") -> None: ...

    return app, clock


def _jobs(app: Chervil) -> list[str]:
    from chervil.brokers.base import JobFilter

    return sorted(j.unique_key or "" for j in app.broker.list_jobs(JobFilter(), limit=1000))


@pytest.mark.parametrize("misfire, expected", [("skip", 0), ("once", 1), (3, 3)])
def test_misfire_policies(tmp_path: Path, misfire: str | int, expected: int) -> None:
    app, clock = _app(tmp_path, misfire)
    s = Scheduler(app, "a")
    assert s.tick() == 0  # a new schedule starts from now
    clock.advance(3600 + 120)  # twelve fires missed, the latest two minutes ago
    assert s.tick() == expected
    assert len(_jobs(app)) == expected
    clock.advance(180)  # on time again
    assert s.tick() == 1
    app.close()


def test_each_tick_is_enqueued_once_whatever_the_schedulers(tmp_path: Path) -> None:
    app, clock = _app(tmp_path, 100)
    a, b = Scheduler(app, "a", lease_seconds=10), Scheduler(app, "b", lease_seconds=10)
    a.tick()
    for _ in range(12):
        clock.advance(60)
        a.tick()
        b.tick()  # stands by: a holds the lease
    assert a.active and not b.active
    keys = _jobs(app)
    assert len(keys) == 2 and keys[0].startswith("cron:report:2026-01-01T00:05")
    # a dies without releasing; b takes over after the lease, and catches up
    clock.advance(11)
    assert b.tick() == 0 and b.active
    clock.advance(600)
    b.tick()
    # a crash between enqueue and mark: the same fires are enqueued again, deduplicated
    app.broker.mark_schedule("report", 0)  # cannot move back
    Scheduler(app, "b").tick()
    keys = _jobs(app)
    assert len(keys) == len(set(keys)) == 4
    app.close()


def test_manual_fire(tmp_path: Path) -> None:
    from chervil.admin import Admin

    app, _ = _app(tmp_path, "once")
    admin = Admin(app)
    job_id = admin.fire_schedule("report")
    assert app.broker.get(job_id) is not None
    [row] = admin.schedules()
    assert row["name"] == "report" and row["next"] > app.clock.now()
    with pytest.raises(Exception, match="no schedule"):
        admin.fire_schedule("nope")
    app.close()
