"""The chervil demo: a producer and a real worker on the embedded SQLite broker.

Run it with ``scripts/demo``. It starts ``chervil worker`` as a separate process,
enqueues jobs that succeed, retry, and end in the dead-letter queue, follows each to
its end, prints each job's story, and stops the worker with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DB = os.path.join(tempfile.mkdtemp(prefix="chervil-demo-"), "chervil.db")
os.environ["CHERVIL_BROKER_URL"] = f"sqlite:///{DB}"
sys.path.insert(0, HERE)

from demo_tasks import add, app, doomed, flaky  # noqa: E402

from chervil.admin import Admin  # noqa: E402
from chervil.job import JobStatus  # noqa: E402


# A task only the producer knows, as when a web app is deployed before its workers.
@app.task(name="reports.monthly")
def monthly_report(month: str) -> None: ...


def story(admin: Admin, job_id: str, title: str) -> None:
    v = admin.job(job_id)
    j = v.job
    print(f"\n== {title}")
    print(f"   job {j.id}  task {j.task}  args {v.args} {v.kwargs}")
    print(f"   status: {j.status.value}{' (' + j.dead_reason + ')' if j.dead_reason else ''}"
          f" after {j.attempts} attempt(s) of {j.max_attempts}")
    if j.last_error:
        print(f"   last error: {j.last_error.type}: {j.last_error.message}")
    if j.result is not None:
        print(f"   result: {j.result}")


def main() -> int:
    print(f"broker: sqlite file {DB}")
    worker = subprocess.Popen(
        [sys.executable, "-m", "chervil.cli", "worker", "demo_tasks:app", "-p", "2", "-t", "4",
         "--log-level", "WARNING"], cwd=HERE)
    try:
        # (what it shows, its handle, the end it must reach)
        cases = [
            ("a job that succeeds", add.enqueue(2, 3), JobStatus.SUCCEEDED, None),
            ("a job that fails twice, then succeeds", flaky.enqueue(1042),
             JobStatus.SUCCEEDED, None),
            ("a job that always fails: dead after its attempts",
             doomed.enqueue(7, card="4111-1111-1111-1111"), JobStatus.DEAD, "retries_exhausted"),
            ("a job for a task no worker has: dead with unknown_task",
             monthly_report.enqueue("2026-10"), JobStatus.DEAD, "unknown_task"),
        ]
        print(f"producer: enqueued {len(cases)} jobs; worker pid {worker.pid} is running them")
        deadline = time.monotonic() + 60
        while not all(h.status().terminal for _, h, _, _ in cases):
            if time.monotonic() > deadline or worker.poll() is not None:
                print("demo: jobs did not finish in time", file=sys.stderr)
                return 1
            time.sleep(0.1)
        admin = Admin(app)
        for title, handle, _, _ in cases:
            story(admin, handle.id, title)
        print(f"\nresult of add(2, 3), fetched by the producer: {cases[0][1].result()}")
        dead = admin.jobs(JobStatus.DEAD)
        print(f"\ndead-letter queue: {len(dead)} job(s), each kept with its reason and error; "
              "requeue with `chervil retry ID` or `chervil retry --all-dead`")
        for title, handle, status, reason in cases:
            j = handle.refresh()
            if (j.status, j.dead_reason) != (status, reason):
                print(f"demo: unexpected end for {title!r}: {j.status} {j.dead_reason}",
                      file=sys.stderr)
                return 1
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=30)
        print(f"\nworker stopped by SIGTERM (exit code {code})")


if __name__ == "__main__":
    sys.exit(main())
