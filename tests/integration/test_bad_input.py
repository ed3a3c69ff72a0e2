"""Malformed records among valid jobs: each ends dead with its reason; nothing else stops."""

from __future__ import annotations

import os
import pickle  # only to build a hostile payload; the package itself never imports it
from collections.abc import Callable
from pathlib import Path

import pytest

from chervil import JobStatus
from chervil.admin import Admin
from chervil.brokers.base import NewJob
from chervil.job import encode_payload, new_job_id

from .conftest import Env, wait_for

pytestmark = pytest.mark.slow


class Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def raw(task: str, payload: bytes) -> NewJob:
    return NewJob(id=new_job_id(), task=task, queue="default", payload=payload, max_attempts=3)


def test_poison_records_go_dead_with_their_reason(env: Callable[..., Env],
                                                  tmp_path: Path) -> None:
    e = env()
    app = e.app()
    canary = tmp_path / "canary"
    cases = {
        "random bytes": (raw("probe", os.urandom(64)), "decode_error"),
        "truncated JSON": (raw("probe", b'{"a": ["k"'), "decode_error"),
        "wrong schema": (raw("probe", b'{"args": ["k"]}'), "decode_error"),
        "invalid UTF-8": (raw("probe", b'{"a": ["\xc3\x28"], "k": {}}'), "decode_error"),
        "deep nesting": (raw("probe", b'{"a": [' + b"[" * 50_000 + b"]" * 50_000 + b'], "k": {}}'),
                         "payload_too_large"),
        "huge integer": (raw("probe", b'{"a": [' + b"7" * 5000 + b'], "k": {}}'), "decode_error"),
        "oversized": (raw("probe", encode_payload(("x" * 70_000,), {}, limit=10**6)),
                      "payload_too_large"),
        "unknown task": (raw("no.such.task", encode_payload(("k",), {})), "unknown_task"),
        "arguments that do not bind": (raw("probe", encode_payload((1, 2, 3), {"z": 1})),
                                       "bad_arguments"),
        "pickle": (raw("probe", pickle.dumps(Canary(str(canary)))), "decode_error"),
    }
    app.broker.enqueue([job for job, _ in cases.values()])
    good = app.enqueue_many([app.tasks["probe"].prepare(f"ok{i}") for i in range(20)])
    worker = e.worker("-p", "2", "-t", "4")
    wait_for(lambda: all(h.status() is JobStatus.SUCCEEDED for h in good), what="valid jobs")
    admin = Admin(app)
    for name, (job, reason) in cases.items():
        got = wait_for(lambda j=job: (x := app.broker.get(j.id)) and x.status.terminal and x,
                       what=name)
        assert (got.status, got.dead_reason, got.attempts) == (JobStatus.DEAD, reason, 1), name
        view = admin.job(job.id)
        if reason in ("decode_error", "payload_too_large"):
            assert view.payload_note is not None and "sha256:" in view.payload_note, name
            assert got.last_error is not None and "sha256:" in got.last_error.message, name
    assert not canary.exists()
    assert worker.poll() is None
    log = e.log_text()
    assert "Traceback" not in log
    assert "\\xc3" not in log and "7777777777" not in log
