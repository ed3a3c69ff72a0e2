"""The demo's tasks: one that succeeds, one that fails twice then succeeds, one that
always fails and ends in the dead-letter queue."""

from __future__ import annotations

import os

from chervil import Chervil, Retry, current_job

app = Chervil(os.environ.get("CHERVIL_BROKER_URL", "sqlite:///chervil-demo.db"))


@app.task(store_result=True)
def add(a: int, b: int) -> int:
    return a + b


@app.task(retry=Retry(max_attempts=3, backoff=0.2, jitter=0.0))
def flaky(order_id: int) -> str:
    job = current_job()
    assert job is not None
    if job.attempt < 3:
        raise ConnectionError(f"payment gateway timed out (attempt {job.attempt})")
    return f"order {order_id} charged once, idempotency key {job.idempotency_key}"


@app.task(retry=Retry(max_attempts=2, backoff=0.2, jitter=0.0), sensitive=("card",))
def doomed(user_id: int, card: str) -> None:
    raise ValueError(f"card {card} declined for user {user_id}")
