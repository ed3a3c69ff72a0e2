"""``Chervil``: the task registry, its settings, its broker, and enqueue."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from .brokers import open_broker
from .brokers.base import Broker
from .clock import Clock, SystemClock
from .errors import ConfigurationError, UnknownTask
from .faults import crash_point
from .limits import FlowControl
from .retry import Retry
from .schedule import Cron, Schedule
from .settings import Settings
from .task import JobHandle, PreparedJob, Task, TaskOptions, check_sensitive, task_name
from .transactional import Outbox, driver_connection, write_outbox

P = ParamSpec("P")
R = TypeVar("R")


class Chervil:
    """A chervil application.

    ``Chervil()`` reads ``CHERVIL_BROKER_URL``, else uses the SQLite file ``./chervil.db``.
    The broker connects lazily, on first use, so worker processes each open their own.
    """

    def __init__(self, url: str | None = None, *, settings: Settings | None = None,
                 clock: Clock | None = None, **setting_overrides: Any) -> None:
        self.settings = settings or Settings.load(broker_url=url, **setting_overrides)
        self.clock: Clock = clock or SystemClock()
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._broker: Broker | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Chervil {self.settings.broker_url} tasks={len(self.tasks)}>"

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    broker = open_broker(self.settings.broker_url, self.clock)
                    broker.max_lost_leases = self.settings.max_lost_leases
                    self._broker = broker
        return self._broker

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's broker, whose connections and files are
        the parent's (an SQLite connection must not cross a fork); the next use opens one."""
        self._broker = None
        self._lock = threading.Lock()

    # -- registering ---------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, /, *, name: str | None = None, queue: str = "default",
             priority: int = 0,
             retry: Retry | None = None, timeout: float | None = None,
             sensitive: Collection[str] = (), store_result: bool = False,
             unique: str | None = None, unique_while: str = "active",
             unique_for: timedelta | float | None = None, lock: str | None = None,
             concurrency: int | None = None, concurrency_key: str | None = None,
             rate_limit: str | None = None, rate_key: str | None = None,
             version: str | None = None,
             ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None,
             queue: str = "default", priority: int = 0, retry: Retry | None = None,
             timeout: float | None = None, sensitive: Collection[str] = (),
             store_result: bool = False, unique: str | None = None,
             unique_while: str = "active", unique_for: timedelta | float | None = None,
             lock: str | None = None, concurrency: int | None = None,
             concurrency_key: str | None = None, rate_limit: str | None = None,
             rate_key: str | None = None, version: str | None = None) -> Any:
        """Register a function as a task (``@app.task`` or ``@app.task(queue=...)``).

        Flow-control options (``unique*``, ``lock``, ``concurrency*``, ``rate_*``) are
        described in ``chervil/limits.py`` and docs/flow-control.md.
        """
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"timeout must be positive seconds, got {timeout}")
        if not queue or ":" in queue or "," in queue:
            raise ConfigurationError(f"queue name {queue!r} must be non-empty, without ':' or ','")
        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name_ = name or task_name(f)
            flow = FlowControl.build(task_name_, inspect.signature(f).parameters, unique,
                                     unique_while, unique_for, lock, concurrency,
                                     concurrency_key, rate_limit, rate_key)
            options = TaskOptions(queue=queue, priority=priority, retry=retry or Retry(),
                                  timeout=timeout, sensitive=check_sensitive(sensitive),
                                  store_result=store_result, version=version, flow=flow)
            if task_name_ in self.tasks:
                raise ConfigurationError(f"a task named {task_name_!r} is already registered; "
                                         "give one of them name=...")
            t = Task(self, f, task_name_, options)
            self.tasks[task_name_] = t
            return t

        return register(fn) if fn is not None else register

    def schedule(self, task: Task[Any, Any], cron: str, *, tz: str = "UTC",
                 args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                 name: str | None = None, misfire: str | int = "once") -> Schedule:
        """Fire ``task(*args, **kwargs)`` on a cron expression in time zone ``tz``.

        ``misfire``: what to do with fires missed while no scheduler ran: "skip",
        "once" (the latest of them) or N (catch up the last N).
        """
        sched = Schedule(name or task.name, task, Cron(cron, tz), tuple(args), kwargs or {},
                         misfire)
        if sched.name in self.schedules:
            raise ConfigurationError(f"a schedule named {sched.name!r} exists; give name=...")
        self.schedules[sched.name] = sched
        return sched

    def cron(self, expression: str, *, tz: str = "UTC", args: Sequence[Any] = (),
             kwargs: dict[str, Any] | None = None, misfire: str | int = "once",
             **task_options: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
        """``@app.cron("*/5 * * * *", tz="Europe/Paris")``: a task and its schedule."""
        def register(fn: Callable[P, R]) -> Task[P, R]:
            task: Task[P, R] = self.task(**task_options)(fn)
            self.schedule(task, expression, tz=tz, args=args, kwargs=kwargs, misfire=misfire)
            return task
        return register

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(f"no task named {name!r} in this app; registered: "
                              f"{sorted(self.tasks) or 'none'}") from None

    # -- enqueueing ----------------------------------------------------------------------
    def enqueue_many(self, calls: Sequence[PreparedJob],
                     connection: Any = None) -> list[JobHandle[Any]]:
        """Commit many jobs in one round trip (``task.prepare(...)`` builds each).

        ``connection``: enqueue inside the caller's open transaction instead (see
        ``chervil/transactional.py``); the jobs exist once the caller commits.
        """
        if not calls:
            return []
        jobs = [c.new_job for c in calls]
        if connection is not None:
            conn = driver_connection(connection)
            if self.uses_outbox:
                write_outbox(conn, jobs, self.clock.now())
                return [JobHandle(self, j.id) for j in jobs]
            if self.settings.broker_url.split("://", 1)[0] in ("redis", "rediss", "unix"):
                raise ConfigurationError(
                    "enqueue with connection= needs a SQL broker, or an outbox for Redis: "
                    "set outbox_url (CHERVIL_OUTBOX_URL) to the app's database")
            results = self.broker.enqueue(jobs, connection=conn)
        else:
            results = self.broker.enqueue(jobs)
        crash_point("after_commit")
        return [JobHandle(self, r.id, r.duplicate) for r in results]

    @property
    def uses_outbox(self) -> bool:
        return bool(self.settings.outbox_url)

    def outbox(self) -> Outbox:
        if not self.settings.outbox_url:
            raise ConfigurationError("no outbox: set outbox_url (CHERVIL_OUTBOX_URL)")
        return Outbox(self, self.settings.outbox_url)

    def enqueue(self, task: str, *args: Any, **kwargs: Any) -> JobHandle[Any]:
        """Enqueue by task name (for tools; code should use ``task.enqueue``)."""
        return self.get_task(task).enqueue(*args, **kwargs)

    def job(self, job_id: str) -> JobHandle[Any]:
        return JobHandle(self, job_id)


def load_app(path: str) -> Chervil:
    """Import ``package.module:attribute`` (attribute defaults to ``app``)."""
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r} ({exc}); give the app as module.path:app "
            "and run from the directory that holds the module") from exc
    app = getattr(module, attr or "app", None)
    if not isinstance(app, Chervil):
        raise ConfigurationError(
            f"{module_name}:{attr or 'app'} is not a Chervil app; point at the object "
            "created with Chervil(...)")
    return app
