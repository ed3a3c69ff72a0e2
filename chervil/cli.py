"""The ``chervil`` command: run workers, enqueue, inspect and operate on jobs.

Commands take the app with ``--app module:app`` (or ``CHERVIL_APP``), so that arguments
are redacted with the tasks' ``sensitive`` lists; without it, only the broker URL is
needed (``--url`` or ``CHERVIL_BROKER_URL``) and every argument value is masked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from .admin import Admin, JobView
from .app import Chervil, load_app
from .errors import ChervilError
from .job import JobStatus, fmt_time
from .worker.child import DEFAULT_PREFETCH


class Context:
    def __init__(self, app_path: str | None, url: str | None) -> None:
        self.app_path = app_path
        self.url = url
        self._app: Chervil | None = None

    @property
    def app(self) -> Chervil:
        if self._app is None:
            if self.app_path:
                sys.path.insert(0, os.getcwd())
                self._app = load_app(self.app_path)
            else:
                self._app = Chervil(self.url)
        return self._app

    @property
    def admin(self) -> Admin:
        return Admin(self.app)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


pass_ctx = click.make_pass_decorator(Context)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group()
@click.option("--app", "-A", "app_path", envvar="CHERVIL_APP", metavar="MODULE:APP",
              help="The Chervil app (module:attribute).")
@click.option("--url", envvar="CHERVIL_BROKER_URL", help="Broker URL, when no --app is given.")
@click.version_option(package_name="chervil")
@click.pass_context
def cli(ctx: click.Context, app_path: str | None, url: str | None) -> None:
    """chervil: background jobs with leases, retries and a dead-letter queue."""
    ctx.obj = Context(app_path, url)
    ctx.call_on_close(ctx.obj.close)


@cli.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("-Q", "--queues", default="default", show_default=True,
              help="Queues in strict order (a,b) or weighted (a:10,b:1).")
@click.option("-p", "--processes", type=click.IntRange(1), default=os.cpu_count() or 1,
              show_default="CPU count", help="Child processes.")
@click.option("-t", "--threads", type=click.IntRange(1), default=8, show_default=True,
              help="Threads per child.")
@click.option("--prefetch", type=click.IntRange(0), default=DEFAULT_PREFETCH, show_default=True,
              help="Most jobs a child may hold beyond its threads, only while jobs are "
                   "short (under 10 ms on average); 0 turns prefetching off.")
@click.option("--burst", is_flag=True, help="Run what is ready, then exit.")
@click.option("--max-jobs-per-child", type=click.IntRange(1), default=None,
              help="Replace a child after this many jobs.")
@click.option("--grace", type=float, default=30.0, show_default=True,
              help="Seconds running jobs get to finish after SIGTERM.")
@click.option("--max-memory-per-child", type=click.FloatRange(min=1), default=None,
              metavar="MB", help="Kill and replace a child whose resident memory passes MB.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--scheduler/--no-scheduler", default=True, show_default=True,
              help="Take part in running cron schedules (one worker is active at a time).")
def worker(app_path: str, queues: str, processes: int, threads: int, prefetch: int,
           burst: bool, max_jobs_per_child: int | None, grace: float,
           max_memory_per_child: float | None, log_level: str, scheduler: bool) -> None:
    """Run a worker: a supervisor and its child processes."""
    from .worker.queues import QueueSpec
    from .worker.supervisor import WorkerOptions, run_worker

    sys.path.insert(0, os.getcwd())
    app = load_app(app_path)
    options = WorkerOptions(QueueSpec.parse(queues), processes, threads, burst,
                            max_jobs_per_child, grace, log_level, scheduler,
                            max_memory_per_child, prefetch)
    sys.exit(run_worker(app_path, app, options))


@cli.command()
@click.argument("task")
@click.option("--args", "args_json", default="[]", help="Positional arguments, a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments, a JSON object.")
@click.option("--delay", type=float, default=None, help="Seconds to wait before running.")
@pass_ctx
def enqueue(c: Context, task: str, args_json: str, kwargs_json: str,
            delay: float | None) -> None:
    """Enqueue TASK with JSON arguments; prints the job id."""
    try:
        args = json.loads(args_json)
        kwargs = json.loads(kwargs_json)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args takes a JSON list and --kwargs a JSON object")
    if delay is not None:
        kwargs["delay"] = delay
    handle = c.app.enqueue(task, *args, **kwargs)
    click.echo(handle.id)


def _job_line(v: JobView) -> str:
    j = v.job
    err = f"  {j.last_error.type}: {j.last_error.message}"[:90] if j.last_error else ""
    reason = f" ({j.dead_reason})" if j.dead_reason else ""
    return (f"{j.id}  {j.status.value + reason:<28} {j.queue:<10} {j.task:<28} "
            f"attempts {j.attempts}/{j.max_attempts}{err}")


def _list(views: list[JobView], as_json: bool, empty: str) -> None:
    if as_json:
        _echo_json([v.to_dict() for v in views])
        return
    for v in views:
        click.echo(_job_line(v))
    if not views:
        click.echo(empty)


@cli.command()
@click.option("--status", type=click.Choice([s.value for s in JobStatus]))
@click.option("--queue")
@click.option("--task")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def jobs(c: Context, status: str | None, queue: str | None, task: str | None, limit: int,
         as_json: bool) -> None:
    """List jobs, newest first."""
    _list(c.admin.jobs(JobStatus(status) if status else None, queue, task, limit), as_json,
          "no jobs match")


@cli.command()
@click.option("--queue")
@click.option("--task")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def dead(c: Context, queue: str | None, task: str | None, limit: int, as_json: bool) -> None:
    """List the dead-letter queue: jobs that ran out of tries or could not run."""
    _list(c.admin.jobs(JobStatus.DEAD, queue, task, limit), as_json,
          "the dead-letter queue is empty")


@cli.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def job(c: Context, job_id: str, as_json: bool) -> None:
    """Show one job's whole story."""
    v = c.admin.job(job_id)
    if as_json:
        _echo_json(v.to_dict())
        return
    j = v.job
    rows = [
        ("id", j.id), ("task", f"{j.task} (version {j.task_version})"),
        ("queue", f"{j.queue} (priority {j.priority})"),
        ("status", j.status.value + (f" ({j.dead_reason})" if j.dead_reason else "")),
        ("attempts", f"{j.attempts} of {j.max_attempts}, {j.lost_leases} lost lease(s)"),
        ("arguments", v.payload_note or f"args={json.dumps(v.args)} kwargs={json.dumps(v.kwargs)}"),
        ("created", fmt_time(j.created_at)), ("run at", fmt_time(j.run_at)),
        ("started", fmt_time(j.started_at)), ("finished", fmt_time(j.finished_at)),
        ("worker", j.worker or "-"), ("lease until", fmt_time(j.lease_until)),
        ("unique key", j.unique_key or "-"), ("result", j.result or "-"),
    ]
    for key, value in rows:
        click.echo(f"{key:>12}  {value}")
    if j.last_error:
        click.echo(f"{'last error':>12}  {j.last_error.type}: {j.last_error.message}")
        if j.last_error.traceback:
            click.echo(j.last_error.traceback.rstrip())


def _confirm(what: str, count: int, yes: bool) -> bool:
    if count == 0:
        click.echo(f"nothing to {what}")
        return False
    if not yes and not click.confirm(f"{what} {count} job(s)?", default=False):
        click.echo("nothing done")
        return False
    return True


@cli.command()
@click.argument("ids", nargs=-1)
@click.option("--all-dead", is_flag=True, help="Every dead job (of --queue/--task).")
@click.option("--queue")
@click.option("--task")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def retry(c: Context, ids: tuple[str, ...], all_dead: bool, queue: str | None,
          task: str | None, yes: bool) -> None:
    """Requeue jobs by id, or every dead job with --all-dead."""
    if bool(ids) == all_dead:
        raise click.UsageError("give job ids, or --all-dead (with --queue/--task), not both")
    if ids:
        click.echo(f"requeued {c.admin.retry(list(ids))} of {len(ids)} job(s)")
        return
    count = c.admin.count_dead(queue, task)
    if _confirm("requeue", count, yes):
        click.echo(f"requeued {c.admin.retry_dead(queue, task)} job(s)")


@cli.command()
@click.argument("queue")
@click.option("--yes", is_flag=True, help="Do not ask.")
@pass_ctx
def purge(c: Context, queue: str, yes: bool) -> None:
    """Cancel every waiting job of QUEUE (records are kept, marked cancelled)."""
    if _confirm(f"cancel the waiting jobs of {queue}:", c.admin.ready_count(queue), yes):
        click.echo(f"cancelled {c.admin.purge(queue)} job(s)")


def _pause(c: Context, queue: str | None, task: str | None, paused: bool) -> None:
    if (queue is None) == (task is None):
        raise click.UsageError("give a QUEUE, or --task NAME")
    word = "paused" if paused else "resumed"
    if task is not None:
        c.admin.pause_task(task, paused)
        click.echo(f"task {task} {word}")
    else:
        c.admin.pause(queue or "", paused)
        click.echo(f"queue {queue} {word}")


@cli.command()
@click.argument("queue", required=False)
@click.option("--task", help="Pause one task type instead of a queue.")
@pass_ctx
def pause(c: Context, queue: str | None, task: str | None) -> None:
    """Stop workers taking jobs of QUEUE (or of one --task); jobs wait, none fail."""
    _pause(c, queue, task, True)


@cli.command()
@click.argument("queue", required=False)
@click.option("--task", help="Resume one task type instead of a queue.")
@pass_ctx
def resume(c: Context, queue: str | None, task: str | None) -> None:
    """Let workers take jobs of QUEUE (or of one --task) again."""
    _pause(c, queue, task, False)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def queues(c: Context, as_json: bool) -> None:
    """Each queue: jobs by status, and the age of its oldest ready job."""
    stats = c.admin.queues()
    paused_tasks = c.admin.paused_tasks()
    if as_json:
        _echo_json([{"queue": s.queue, "counts": s.counts, "ready": s.ready,
                     "oldest_ready_age_seconds": s.oldest_ready_age, "paused": s.paused}
                    for s in stats] + [{"task": t, "paused": True} for t in paused_tasks])
        return
    click.echo(f"{'queue':<16}{'ready':>8}{'age':>10}{'scheduled':>11}{'running':>9}"
               f"{'dead':>7}{'succeeded':>11}  state")
    for s in stats:
        age = "-" if s.oldest_ready_age is None else f"{s.oldest_ready_age:.1f}s"
        n = s.counts
        click.echo(f"{s.queue:<16}{s.ready:>8}{age:>10}{n.get('scheduled', 0):>11}"
                   f"{n.get('running', 0):>9}{n.get('dead', 0):>7}{n.get('succeeded', 0):>11}"
                   f"  {'paused' if s.paused else 'active'}")
    if not stats:
        click.echo("no queues yet")
    for t in paused_tasks:
        click.echo(f"task {t}: paused (its jobs wait)")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_ctx
def workers(c: Context, as_json: bool) -> None:
    """Live workers: host, pid, queues, tasks, current jobs."""
    found = c.admin.workers()
    if as_json:
        _echo_json([w.to_dict() for w in found])
        return
    for w in found:
        click.echo(f"{w.id}  queues={','.join(w.queues)}  tasks={len(w.tasks)}  "
                   f"jobs={len(w.jobs)}  {w.counters}")
    if not found:
        click.echo("no live workers")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """Cron schedules: next and last fire of each."""
    if ctx.invoked_subcommand is not None:
        return
    c: Context = ctx.obj
    rows = c.admin.schedules()
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<28} {r['cron']:<18} {r['tz']:<16} next {fmt_time(r['next'])}"
                   f"  last {fmt_time(r['last'])}  misfire={r['misfire']}")
    if not rows:
        click.echo("no schedules in this app (give --app)")


@schedules.command("run")
@click.argument("name")
@pass_ctx
def schedules_run(c: Context, name: str) -> None:
    """Fire schedule NAME once, now."""
    click.echo(c.admin.fire_schedule(name))


def _run_until_signal(app_path: str, log_level: str,
                      body: Callable[[Chervil, threading.Event, str], None]) -> None:
    """Load the app and run ``body(app, stop, owner)`` until SIGTERM or SIGINT."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    sys.path.insert(0, os.getcwd())
    app = load_app(app_path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    body(app, stop, f"{socket.gethostname()}:{os.getpid()}")
    app.close()


@cli.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("--log-level", default="INFO", show_default=True)
def scheduler(app_path: str, log_level: str) -> None:
    """Run only the cron scheduler (one is active at a time, the others stand by)."""
    from .schedule import Scheduler

    _run_until_signal(app_path, log_level,
                      lambda app, stop, owner: Scheduler(app, owner).run(stop))


@cli.command()
@click.argument("app_path", metavar="MODULE:APP")
@click.option("--log-level", default="INFO", show_default=True)
def relay(app_path: str, log_level: str) -> None:
    """Run only the outbox relay (one is active at a time, the others stand by)."""
    _run_until_signal(app_path, log_level,
                      lambda app, stop, owner: app.outbox().run(stop, owner))


@cli.command()
@pass_ctx
def migrate(c: Context) -> None:
    """Create or upgrade the broker's schema (safe to run from several processes)."""
    url = c.app.settings.broker_url
    if url.split("://", 1)[0] in ("postgres", "postgresql"):
        from .brokers.postgres_setup import migrate as pg_migrate

        applied = pg_migrate(url)
        click.echo(f"applied migrations {applied}" if applied else "schema is up to date")
        return
    c.app.broker.queue_stats()  # SQLite migrates on connect; Redis has no schema
    if c.app.uses_outbox:
        outbox = c.app.outbox()
        outbox.ensure_schema()
        outbox.close()
        click.echo("outbox table ready")
    click.echo("schema is up to date")


def main() -> None:
    try:
        cli(standalone_mode=True)
    except ChervilError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
