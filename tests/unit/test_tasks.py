"""Tasks, enqueue and the testing kit, on a throwaway SQLite app with a fake clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from chervil import (
    Chervil,
    ConfigurationError,
    Discard,
    JobFailed,
    JobStatus,
    PayloadTooLarge,
    Retry,
    current_job,
)
from chervil.testing import JobFailedInDrain, drain, temporary_app


@pytest.fixture
def app(tmp_path: Path) -> Chervil:
    a = temporary_app(tmp_path)
    yield a
    a.close()


def test_enqueue_binds_in_the_caller(app: Chervil) -> None:
    @app.task
    def charge(order_id: int, amount: int, *, currency: str = "EUR") -> None: ...

    with pytest.raises(TypeError, match="amount"):
        charge.enqueue(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        charge.enqueue(1, 2, colour="red")  # type: ignore[call-arg]
    with pytest.raises(PayloadTooLarge):
        charge.enqueue(1, 2, currency="x" * 100_000)
    handle = charge.enqueue(1, 2, currency="USD")
    job = handle.refresh()
    assert job.status is JobStatus.QUEUED and job.task.endswith("charge")
    assert job.max_attempts == 3 and job.task_version == charge.version


def test_delay_and_at(app: Chervil) -> None:
    @app.task
    def ping() -> None: ...

    now = app.clock.now()
    assert ping.enqueue(delay=60).refresh().run_at == now + 60  # type: ignore[call-arg]
    assert ping.enqueue(delay=timedelta(hours=2)).refresh().run_at == now + 7200  # type: ignore[call-arg]
    when = datetime(2031, 1, 1, tzinfo=UTC)
    job = ping.enqueue(at=when).refresh()  # type: ignore[call-arg]
    assert job.status is JobStatus.SCHEDULED and job.run_at == when.timestamp()
    with pytest.raises(ValueError, match="timezone"):
        ping.enqueue(at=datetime(2031, 1, 1))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="not both"):
        ping.enqueue(delay=1, at=when)  # type: ignore[call-arg]


def test_retries_then_success_with_attempt_and_idempotency_key(app: Chervil) -> None:
    seen: list[tuple[int, str]] = []

    @app.task(retry=Retry(max_attempts=3, backoff=5.0, jitter=0.0), store_result=True)
    def flaky(x: int) -> int:
        ctx = current_job()
        assert ctx is not None
        seen.append((ctx.attempt, ctx.idempotency_key))
        if ctx.attempt < 3:
            raise ConnectionError("try again")
        return x * 2

    handle = flaky.enqueue(21)
    report = drain(app)
    assert report.outcomes == {"scheduled": 2, "succeeded": 1}
    assert [a for a, _ in seen] == [1, 2, 3] and {k for _, k in seen} == {handle.id}
    assert handle.result(timeout=1) == 42
    job = handle.refresh()
    assert job.attempts == 3 and job.last_error is not None
    assert job.last_error.type == "ConnectionError"


def test_dead_letters_keep_the_error_and_can_be_requeued(app: Chervil) -> None:
    calls = []

    @app.task(retry=Retry(max_attempts=2, backoff=1.0), sensitive=("card",))
    def pay(user: int, card: str) -> None:
        calls.append(card)
        if len(calls) < 3:
            raise ValueError(f"card {card} declined")

    handle = pay.enqueue(1, card="4111-2222")
    drain(app)
    job = handle.refresh()
    assert job.status is JobStatus.DEAD and job.dead_reason == "retries_exhausted"
    assert job.last_error is not None and "4111-2222" not in job.last_error.message
    assert "***" in job.last_error.message and "4111-2222" not in job.last_error.traceback
    with pytest.raises(JobFailed, match="retries_exhausted"):
        handle.result(timeout=0.1)
    assert app.broker.requeue([handle.id]) == 1
    drain(app)
    assert handle.status() is JobStatus.SUCCEEDED


def test_discard_and_not_retryable(app: Chervil) -> None:
    @app.task(retry=Retry(max_attempts=5, never_on=(KeyError,)))
    def pick(kind: str) -> None:
        if kind == "discard":
            raise Discard("user deleted")
        raise KeyError(kind)

    a, b = pick.enqueue("discard"), pick.enqueue("missing")
    drain(app)
    ja, jb = a.refresh(), b.refresh()
    assert (ja.status, ja.dead_reason, ja.attempts) == (JobStatus.DEAD, "discarded", 1)
    assert ja.last_error is not None and ja.last_error.message == "user deleted"
    assert (jb.dead_reason, jb.attempts) == ("not_retryable", 1)


def test_async_tasks_run(app: Chervil) -> None:
    @app.task(store_result=True)
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    handles = app.enqueue_many([fetch.prepare(i) for i in range(5)])
    drain(app)
    assert [h.result(timeout=1) for h in handles] == [1, 2, 3, 4, 5]


def test_enqueue_many_and_unique_keys(app: Chervil) -> None:
    @app.task(unique="welcome:{user_id}")
    def welcome(user_id: int, lang: str = "en") -> None: ...

    handles = app.enqueue_many([welcome.prepare(1), welcome.prepare(2), welcome.prepare(1)])
    assert handles[2].duplicate and handles[2].id == handles[0].id
    assert not handles[0].duplicate and handles[0].refresh().unique_key == "welcome:1"
    assert welcome.enqueue(2, lang="fr").duplicate


def test_unknown_task_goes_dead(app: Chervil, tmp_path: Path) -> None:
    other = Chervil(f"sqlite:///{tmp_path}/chervil-test.db", clock=app.clock)

    @other.task(name="reports.monthly")
    def monthly() -> None: ...

    handle = monthly.enqueue()
    drain(app)
    job = handle.refresh()
    assert (job.status, job.dead_reason) == (JobStatus.DEAD, "unknown_task")
    other.close()


def test_drain_fail_fast_reraises(app: Chervil) -> None:
    @app.task
    def boom() -> None:
        raise RuntimeError("kaput")

    boom.enqueue()
    with pytest.raises(RuntimeError, match="kaput"):
        drain(app, fail_fast=True)
    app.tasks.clear()
    app.broker.requeue([j.id for j in app.broker.list_jobs(_all())])
    with pytest.raises(JobFailedInDrain, match="unknown_task"):
        drain(app, fail_fast=True)


def _all():  # type: ignore[no-untyped-def]
    from chervil.brokers.base import JobFilter

    return JobFilter()


def test_task_options_are_checked(app: Chervil) -> None:
    with pytest.raises(ConfigurationError, match="not a parameter"):
        @app.task(sensitive=("pasword",))
        def login(password: str) -> None: ...
    with pytest.raises(ConfigurationError, match="queue name"):
        app.task(queue="a,b")(lambda: None)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task(name="x")(lambda: None)
        app.task(name="x")(lambda: None)


def test_version_is_a_signature_fingerprint(app: Chervil) -> None:
    def v1(a: int) -> None: ...
    def v2(a: int, b: int) -> None: ...
    t1, t2 = app.task(name="v1")(v1), app.task(name="v2")(v2)
    t3 = app.task(name="v3", version="2024-05")(v1)
    assert t1.version != t2.version and t3.version == "2024-05"
