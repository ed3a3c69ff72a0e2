"""T-12/T-13 on every broker: raw malformed records injected with ``broker.enqueue``
among valid jobs, and tasks that crash their worker child.

Malformed records end dead on their first delivery with the matching reason; crashing
tasks end dead with ``worker_lost`` after 3 lost leases (``os._exit``, a segfault, memory
past ``--max-memory-per-child``) or ``time_limit`` (a loop past the hard limit). The
supervisor never exits, valid jobs all succeed, no log shows a raw body.
"""

from __future__ import annotations

import os
import pickle  # only to build a hostile payload; the package itself never imports it
from pathlib import Path

import pytest

from chervil.admin import Admin
from chervil.brokers.base import NewJob
from chervil.job import JobStatus, encode_payload, new_job_id

from .conftest import Backend
from .harness import Cluster, new_seed, read_ledger, wait_terminal

pytestmark = pytest.mark.slow


class Canary:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def raw(task: str, payload: bytes) -> NewJob:
    return NewJob(id=new_job_id(), task=task, queue="default", payload=payload, max_attempts=3)


def poison_cases(canary: Path) -> dict[str, tuple[NewJob, str]]:
    return {
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


def test_malformed_records_go_dead_with_their_reason(backend: Backend, tmp_path: Path) -> None:
    from tests.reliability import probeapp

    c = Cluster(tmp_path, backend.url, new_seed())
    app = probeapp.build(backend.url)
    try:
        canary = tmp_path / "canary"
        cases = poison_cases(canary)
        jobs = [job for job, _ in cases.values()]
        app.broker.enqueue(jobs[:5])
        good = app.enqueue_many([app.tasks["probe"].prepare(f"ok{i}") for i in range(20)])
        app.broker.enqueue(jobs[5:])
        worker = c.worker("-p", "2", "-t", "4", "--no-scheduler")
        broker = c.broker()
        assert [j.status for j in wait_terminal(broker, [h.id for h in good])] == [
            JobStatus.SUCCEEDED] * 20
        ended = wait_terminal(broker, [j.id for j in jobs])
        admin = Admin(app)
        for (name, (_, reason)), got in zip(cases.items(), ended, strict=True):
            assert (got.status, got.dead_reason, got.attempts) == (JobStatus.DEAD, reason, 1), name
            if reason in ("decode_error", "payload_too_large"):
                view = admin.job(got.id)
                assert view.payload_note is not None and "sha256:" in view.payload_note, name
                assert got.last_error is not None and "sha256:" in got.last_error.message, name
        assert not canary.exists()
        assert worker.poll() is None
        log = c.log_text()
        assert "Traceback" not in log
        assert "\\xc3" not in log and "7777777777" not in log
    finally:
        app.close()
        c.close()


CRASHES = {"exit": ("crash", "worker_lost", 3), "segfault": ("crash", "worker_lost", 3),
           "memory": ("crash", "worker_lost", 3), "loop": ("crash_limited", "time_limit", 2)}


def test_crashing_tasks_end_dead_after_bounded_tries(backend: Backend, tmp_path: Path) -> None:
    from tests.reliability import probeapp

    c = Cluster(tmp_path, backend.url, new_seed())
    app = probeapp.build(backend.url)
    try:
        handles = {how: app.tasks[task].enqueue(how, how) for how, (task, _, _) in CRASHES.items()}
        good = app.enqueue_many([app.tasks["probe"].prepare(f"ok{i}", 20) for i in range(30)])
        # one thread per child: a crash takes no other job down with it (exact try counts)
        worker = c.worker("-p", "2", "-t", "1", "--no-scheduler", "--max-memory-per-child", "200")
        broker = c.broker()
        ended = dict(zip(handles, wait_terminal(broker, [h.id for h in handles.values()],
                                                timeout=90), strict=True))
        runs, _, _ = read_ledger(c.ledger_path)
        for how, (_, reason, tries) in CRASHES.items():
            job = ended[how]
            assert (job.status, job.dead_reason) == (JobStatus.DEAD, reason), (how, job)
            assert len([r for r in runs if r.job == job.id]) == tries, how
            if reason == "worker_lost":
                assert job.lost_leases == 3, how
        assert [j.status for j in wait_terminal(broker, [h.id for h in good])] == [
            JobStatus.SUCCEEDED] * 30
        assert worker.poll() is None, "the supervisor exited"
    finally:
        app.close()
        c.close()
