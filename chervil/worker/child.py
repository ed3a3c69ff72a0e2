"""One worker child process: ``threads`` + 1 executors, one of them the fetcher at any
time, a finisher, a heartbeat.

    fetcher                reserve up to the free slots (and, while jobs are short, a
                           prefetch beyond them) -> inbox; wait on the broker
    executor threads       inbox -> runner.execute -> outbox (a slot is free again)
    finisher thread        outbox -> broker.finish, in batches of whatever is waiting
    heartbeat thread       extend every held lease, announce the worker, recover
                           expired leases of others, prune by retention

The fetcher is a role, not a thread (leader/follower): when a wait on the broker brings
jobs to a child with an idle executor and nothing in its inbox, the fetcher hands its
role to an idle executor and runs the first job itself. Handing that job to another
thread (a wake-up, then the GIL) cost 0.1-0.2 ms of its pickup on two cores (Redis,
0.9 ms in all). At most ``threads`` jobs run at once: the thread that fetches runs none.

The child tells its supervisor what it holds over a pipe (see ``report.py``), so that
the supervisor can enforce hard time limits and hand jobs back if the child dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

from ..app import Chervil
from ..brokers.base import Lease, Outcome, WorkerInfo
from ..faults import crash_point
from ..job import Job, JobStatus
from ..runner import execute
from .inbox import Inbox, Lead
from .queues import QueueSpec
from .report import Reporter

log = logging.getLogger("chervil.worker")

UNKNOWN_TASK_RETRY_SECONDS = 5.0
FINISH_BATCH = 500
# Reserve once this many slots are free (or all of them, or 2 ms after the first): a
# batch large enough to share its round trip, small enough that the other threads are
# still busy while it travels. Waiting for all 32 threads of -t32 to be free left them
# idle during every reserve (Redis drain 9,100 -> 10,300 jobs/s with 8).
RESERVE_AT = 8
# Prefetch: while jobs are short, a child may hold jobs beyond its threads, so that each
# reserve (a round trip and a commit) takes a larger batch. Without it the free slots at
# each reserve are only those the previous batch does not hold yet: with -t32 and a task
# making one Redis call, 15 jobs per reserve, and the reserve's fixed cost set the drain
# rate (PostgreSQL, -p2: 27k jobs in a 4.5 s window; 33k prefetching 32, 36k with 64;
# -t8: 20k, and 34k with 56). How many: up to ``prefetch`` (DEFAULT_PREFETCH), and no
# more than the threads run in PREFETCH_WAIT_SECONDS at the jobs' average run time, which
# is about how long a prefetched job waits for a thread (the inbox runs urgent queues and
# priorities first, so a job reserved later overtakes prefetched ones). None while the
# average run time is over SHORT_JOB_SECONDS or a job has been running over
# LONG_JOB_SECONDS (Celery's prefetch is blind to this: its users find jobs stuck behind
# a long one on a worker while others idle). Should every thread still be taken by long
# jobs, prefetched jobs no thread took for STRANDED_SECONDS are handed back. For
# LIMITED_SECONDS after a reserve brought several jobs of one concurrency key, at most
# that key's spare slots: a held job counts as running against its key, so prefetched
# ones hold slots of a shared limit that no thread runs, and prefetching as much as
# plain jobs starved the other children (concurrency=64: 1,700 jobs/s, 2,100 with no
# prefetch). Spare slots are those the threads of every live worker that runs the task
# cannot fill, shared among those workers (see _spare_slots), so no thread anywhere
# waits for a slot a prefetched job holds. A lock admits one job per key, so a reserve
# never brings two of one: prefetching the jobs of many locks holds each lock for about
# a short job's run time, and drained 3,850 jobs/s against 2,000 without.
DEFAULT_PREFETCH = 64
PREFETCH_WAIT_SECONDS = 0.05
SHORT_JOB_SECONDS = 0.01
LONG_JOB_SECONDS = 0.1
STRANDED_SECONDS = 1.0
LIMITED_SECONDS = 10.0
SETTLE_SECONDS = 1.0  # see _live_workers
STALLED_EXIT = 75


class Child:
    def __init__(self, app: Chervil, queues: QueueSpec, threads: int = 4, *,
                 worker_id: str | None = None, burst: bool = False,
                 max_jobs: int | None = None, grace_seconds: float = 30.0,
                 poll_seconds: float = 1.0, reporter: Reporter | None = None,
                 prefetch: int = DEFAULT_PREFETCH) -> None:
        self.app = app
        self.broker = app.broker
        self.queues = queues
        self.threads = threads
        self.prefetch = prefetch
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.burst = burst
        self.max_jobs = max_jobs
        self.grace_seconds = grace_seconds
        self.poll_seconds = poll_seconds
        self.lease_seconds = app.settings.lease_seconds
        self.reporter = reporter or Reporter(None)
        self.started_at = app.clock.now()

        self._inbox = Inbox(queues)
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # slots freed: wakes the fetcher
        self._flush = threading.Condition(lock)  # outcomes to record: wakes the finisher
        self._free = threads  # threads minus held jobs: below 0 while jobs are prefetched
        self._held: dict[str, Job] = {}
        # held jobs not started yet -> when their lease runs out at the latest (monotonic;
        # see _lease_lapsing): set at the reserve, moved on by each extend that renews it
        self._lease_due: dict[str, float] = {}
        self._pending: list[Outcome] = []  # outcomes not yet recorded in the broker
        self._ran: set[str] = set()  # held jobs whose outcome is in hand, not yet recorded
        self._waiting_on_broker = False  # the fetcher is blocked in broker.wait()
        self._closing = False
        self._stopping = threading.Event()
        self._done = 0
        self._counters = {"succeeded": 0, "retried": 0, "dead": 0, "fenced": 0, "lapsed": 0}
        self._calls: dict[int, tuple[str, float]] = {}  # thread -> (broker call, start)
        self._run_avg = 1.0  # moving average of job run times (s): long until measured
        self._running: dict[int, float] = {}  # executor thread -> start of its job
        # (until, prefetch allowed until then): jobs of a shared concurrency key came
        self._limited: tuple[float, int] = (0.0, 0)
        self._workers: tuple[float, list[WorkerInfo]] = (0.0, [])  # live workers, cached
        self._born = time.monotonic()
        self._fetch_over = threading.Event()  # the fetcher stopped: shut down
        self._fetch_error: BaseException | None = None  # what stopped it, if it failed

    # -- control --------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reserving; running jobs finish, unstarted ones are handed back.

        Safe from a signal handler: it only sets an event (the fetcher wakes within its
        1 s look at the stop flag, or at once if it is waiting on the broker's clock).
        """
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides

    def run(self) -> int:
        # threads + 1: one of them fetches at any time (the first, to begin with)
        executors = [threading.Thread(target=self._execute_loop, args=(i == 0,),
                                      name=f"chervil-exec-{i}", daemon=True)
                     for i in range(self.threads + 1)]
        finisher = threading.Thread(target=self._finish_loop, name="chervil-finish",
                                    daemon=True)
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="chervil-heartbeat",
                                     daemon=True)
        watchdog = threading.Thread(target=self._watchdog_loop, name="chervil-watchdog",
                                    daemon=True)
        self._announce()  # before the first reserve: its view of workers includes this one
        for t in (*executors, finisher, heartbeat, watchdog):
            t.start()
        try:
            while not self._fetch_over.wait(1.0):
                pass
        finally:
            self._shutdown(executors, finisher)
        if self._fetch_error is not None:
            raise self._fetch_error
        return 0

    # -- fetcher ---------------------------------------------------------------------------
    def _lead(self) -> Job | None:
        """Fetch, in the executor that holds the fetcher's role: the job it is to run at
        once, having handed the role on, or None once fetching is over (the main thread
        then shuts the child down)."""
        try:
            first = self._fetch_loop()
        except BaseException as exc:  # raised again by run(), after the shutdown
            self._fetch_error = exc
            first = None
        if first is None:
            self._fetch_over.set()
        return first

    def _fetch_loop(self) -> Job | None:
        backoff = 0.0
        want = min(self.threads, RESERVE_AT)
        while not self._stopping.is_set():
            with self._cond:
                stranded = self._wait_for_slots(want)
                if self._stopping.is_set():
                    break
                outcomes, self._pending = self._pending, []
                free = self._free + self._prefetch_now()
            if stranded:
                self._hand_back_unstarted("no thread took them")
            if outcomes:
                _before_finish(outcomes)
            try:
                with self._in_broker("fetch"):
                    accepted, jobs = self.broker.finish_and_reserve(
                        outcomes, self.queues.order(), free, self.id, self.lease_seconds)
                if backoff:
                    log.warning("broker reachable again; resuming")
                    backoff = 0.0
            except Exception as exc:  # ChervilError, or a driver's connection error
                with self._cond:
                    self._pending[:0] = outcomes  # nothing is lost: try again
                backoff = self._broker_down(exc, backoff)
                continue
            self._recorded(outcomes, accepted)
            if jobs:
                self._take(jobs)
                continue
            with self._cond:
                busy = self._free < self.threads or bool(self._pending)
                if self.burst:
                    if not busy:
                        break
                    self._cond.wait(0.05)  # a running job will finish: look again then
                    continue
                self._waiting_on_broker = True
                if self._pending:
                    self._flush.notify()  # the finisher records them meanwhile
                # slots only free up while waiting: as many as now is never too many
                free = self._free + self._prefetch_now()
            jobs = []
            self.reporter.flush()  # before waiting (see report.py)
            try:
                with self._in_broker("wait", extra=self.poll_seconds):
                    jobs = self.broker.wait_and_reserve(
                        self.queues.order(), self.poll_seconds, free, self.id,
                        self.lease_seconds)
            except Exception as exc:
                backoff = self._broker_down(exc, backoff)
            finally:
                with self._cond:
                    self._waiting_on_broker = False
            if jobs:
                with self._cond:
                    # an executor is idle to take the role, and none of the jobs held
                    # before is waiting for one (they are not overtaken)
                    run_here = len(self._running) < self.threads and not len(self._inbox)
                if run_here:
                    self._take(jobs, lead=True)
                    return jobs[0]
                self._take(jobs)
        return None

    def _take(self, jobs: list[Job], lead: bool = False) -> None:
        """Jobs just reserved: held, reported to the supervisor, into the inbox; with
        ``lead``, all but the first, which the fetcher runs itself, and the fetcher's
        role to the next idle executor."""
        crash_point("claimed")
        keys = Counter(j.limit_key for j in jobs if j.limit_key is not None)
        if any(n > 1 for n in keys.values()):  # a key that admits several: LIMITED_SECONDS
            tasks = {j.task for j in jobs if j.limit_key and keys[j.limit_key] > 1}
            self._limited = (time.monotonic() + LIMITED_SECONDS, self._spare_slots(tasks))
        due = time.monotonic() + self.lease_seconds
        with self._cond:
            self._free -= len(jobs)
            for job in jobs:
                self._held[job.id] = job
                self._lease_due[job.id] = due
        self.reporter.held(jobs)
        self._inbox.put(jobs[1:] if lead else jobs, lead=lead)

    def _wait_for_slots(self, want: int) -> bool:
        """Under the lock: wait until enough slots are free to reserve a useful batch.

        Reserve at once when ``want`` slots (``RESERVE_AT``, or all threads if fewer) are
        free, counting the prefetch allowed now; with fewer free, wait at most 2 ms for
        more, so a busy child reserves (and records outcomes) in batches, one transaction
        per batch, without leaving a slot idle for long. True when prefetched jobs are
        stranded (see ``STRANDED_SECONDS``): the caller hands them back.
        """
        deadline = None
        while not self._stopping.is_set():
            free = self._free + self._prefetch_now()
            if free >= want or (free > 0 and self._free >= self.threads):
                return False
            self.reporter.flush()  # before waiting (see report.py)
            if free > 0:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + 0.002
                if now >= deadline:
                    return False
                self._cond.wait(deadline - now)
            else:
                self._cond.wait(1.0)
                if (len(self._inbox) and self._free < 0
                        and time.monotonic() - self._inbox.last_take > STRANDED_SECONDS):
                    return True
        return False

    def _prefetch_now(self) -> int:
        """Jobs to hold beyond the threads now (see DEFAULT_PREFETCH)."""
        avg = self._run_avg
        if not self.prefetch or avg > SHORT_JOB_SECONDS:
            return 0
        now = time.monotonic()
        until, allowed = self._limited
        cap = allowed if now < until else self.prefetch
        if not cap or any(now - t > LONG_JOB_SECONDS for t in list(self._running.values())):
            return 0
        return min(cap, int(self.threads * PREFETCH_WAIT_SECONDS / max(avg, 1e-6)))

    def _spare_slots(self, tasks: set[str]) -> int:
        """Jobs of these tasks' concurrency keys this child may hold beyond its threads:
        per key, its limit minus the threads of the live workers that run the task,
        divided among them. 0 when a task has no concurrency limit or a worker did not
        announce its threads (an older version)."""
        try:
            workers = self._live_workers()
        except Exception:
            return 0
        allowed = self.prefetch
        for name in tasks:
            task = self.app.tasks.get(name)
            limit = task.options.flow.concurrency if task is not None else None
            runners = [w for w in workers if name in w.tasks and w.id != self.id]
            if not limit or any(w.threads <= 0 for w in runners):
                return 0
            spare = limit - self.threads - sum(w.threads for w in runners)
            allowed = min(allowed, max(0, spare // (len(runners) + 1)))
        return allowed

    def _live_workers(self) -> list[WorkerInfo]:
        """The broker's live workers, read at most every 5 s once settled.

        A view read in this child's first SETTLE_SECONDS, or one that lacks it, is used
        but not kept: the workers started with it (its siblings) may not have announced
        themselves yet. Kept, such a view sized a concurrency key's prefetch as if this
        child ran alone: one of two children held 56 of 64 slots for a whole Redis drain,
        which then ran at 0.55-0.6 of the plain drain instead of 0.9-1.0.
        """
        checked, workers = self._workers
        now = time.monotonic()
        if now - checked > 5.0:
            workers = self.broker.workers(seen_within=self.lease_seconds)
            if now - self._born > SETTLE_SECONDS and any(w.id == self.id for w in workers):
                self._workers = (now, workers)
        return workers

    def _broker_down(self, exc: BaseException, backoff: float) -> float:
        backoff = min(max(backoff * 2, 0.1), 5.0)
        log.warning("broker unavailable (%s: %s); retrying in %.1f s",
                    type(exc).__name__, exc, backoff)
        self._stopping.wait(backoff)
        return backoff

    # -- executors ------------------------------------------------------------------------
    def _execute_loop(self, lead: bool = False) -> None:
        """Run jobs from the inbox; fetch instead while holding the fetcher's role."""
        me = threading.get_ident()
        while True:
            if lead:
                lead = False
                first = self._lead()
                if first is not None:
                    self._run(first, me)
                continue
            job = self._inbox.get()
            if job is None:
                return
            if isinstance(job, Lead):
                lead = True
                continue
            self._run(job, me)

    def _run(self, job: Job, me: int) -> None:
        if self._lease_lapsing(job):
            return
        start = time.monotonic()
        task = self.app.tasks.get(job.task)
        if task is None and self._handed_back(job):
            return
        settings = self.app.settings
        self.reporter.started(job, task.options.timeout if task else None)
        crash_point("task_started")
        self._running[me] = start
        outcome = execute(task, job, self.app.clock, settings.payload_limit_bytes)
        del self._running[me]
        with self._cond:
            self._run_avg += 0.05 * (time.monotonic() - start - self._run_avg)
            self._pending.append(outcome)
            self._ran.add(job.id)
            self._free += 1
            self._done += 1
            self._cond.notify()
            if self._waiting_on_broker:
                self._flush.notify()
            if self.max_jobs is not None and self._done >= self.max_jobs:
                self._stopping.set()

    def _lease_lapsing(self, job: Job) -> bool:
        """A held job whose lease an extend reported lost, or that has less than a third
        of a lease left (the heartbeat renews every third: it could not reach the broker
        meanwhile), is not started: by the time it ran, another worker could have
        recovered it and run it too. It is handed back instead (the release is fenced by
        its token, and spends no attempt); if the broker cannot be reached, recovery
        requeues it once its lease has run out."""
        with self._cond:
            due = self._lease_due.pop(job.id, None)
        if due is None or due - time.monotonic() > self.lease_seconds / 3:
            return False
        with contextlib.suppress(Exception):
            self.broker.release([Lease(job.id, job.lease_token or "")])
        self._let_go(job, "lapsed")
        log.warning("job %s: not started, its lease was lost or about to lapse (the broker "
                    "was out of reach); handed back", job.id)
        return True

    def _handed_back(self, job: Job) -> bool:
        """An unknown task another live worker runs: hand it back, within a bounded wait."""
        waited = self.app.clock.now() - job.created_at
        if waited > self.app.settings.unknown_task_wait_seconds:
            return False
        if job.task not in self._tasks_of_live_workers():
            return False
        try:
            self.broker.release([Lease(job.id, job.lease_token or "")],
                                delay=UNKNOWN_TASK_RETRY_SECONDS)
        except Exception:
            log.exception("could not hand back job %s", job.id)
        self._let_go(job)
        return True

    def _let_go(self, job: Job, counter: str | None = None) -> None:
        """A held job handed back unstarted: no longer held, its slot free again."""
        with self._cond:
            self._held.pop(job.id, None)
            self._free += 1
            if counter is not None:
                self._counters[counter] += 1
            self._cond.notify_all()
        self.reporter.done([job.id])

    def _tasks_of_live_workers(self) -> set[str]:
        return {t for w in self._live_workers() if w.id != self.id for t in w.tasks}

    # -- finisher --------------------------------------------------------------------------
    def _finish_loop(self) -> None:
        """Record outcomes while the fetcher is blocked waiting for new jobs."""
        while True:
            with self._cond:
                while not self._closing and not (self._pending and self._waiting_on_broker):
                    self._flush.wait()
                if self._closing and not self._pending:
                    return
                batch, self._pending = self._pending[:FINISH_BATCH], self._pending[FINISH_BATCH:]
            self._recorded(batch, self._finish(batch))

    def _finish(self, batch: list[Outcome]) -> list[bool]:
        _before_finish(batch)
        delay = 0.05
        while True:
            try:
                with self._in_broker("finish"):
                    return self.broker.finish(batch)
            except Exception as exc:
                log.warning("could not record %d outcome(s) (%s: %s); retrying in %.1f s",
                            len(batch), type(exc).__name__, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _recorded(self, batch: list[Outcome], accepted: list[bool]) -> None:
        if not batch:
            return
        with self._cond:
            for outcome, ok in zip(batch, accepted, strict=True):
                self._held.pop(outcome.job_id, None)
                self._ran.discard(outcome.job_id)
                if not ok:
                    self._counters["fenced"] += 1
                    log.warning("job %s: outcome %s rejected, its lease was lost meanwhile",
                                outcome.job_id, outcome.status.value)
                elif outcome.status is JobStatus.SUCCEEDED:
                    self._counters["succeeded"] += 1
                elif outcome.status is JobStatus.SCHEDULED:
                    self._counters["retried"] += 1
                    log.info("job %s failed (%s), retry at %.3f", outcome.job_id,
                             outcome.error.type if outcome.error else "?", outcome.retry_at or 0)
                else:
                    self._counters["dead"] += 1
                    log.warning("job %s dead (%s): %s", outcome.job_id, outcome.dead_reason,
                                outcome.error.message if outcome.error else "")
        self.reporter.done([o.job_id for o in batch])

    # -- watchdog -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _in_broker(self, what: str, extra: float = 0.0) -> Iterator[None]:
        """Mark a broker call in progress, so the heartbeat can spot one that never ends."""
        key = threading.get_ident()
        self._calls[key] = (what, time.monotonic() + extra)
        try:
            yield
        finally:
            self._calls.pop(key, None)

    def _watchdog_loop(self) -> None:
        interval = min(5.0, self.app.settings.broker_stall_seconds / 4)
        while not self._stopping.wait(interval):
            self._check_stalls()

    def _check_stalls(self) -> None:
        """A call stuck past ``broker_stall_seconds`` (a silent network, a driver that
        never returns) would leave this child taking no jobs for ever: exit, and let the
        supervisor replace the child and hand its jobs back."""
        limit = self.app.settings.broker_stall_seconds
        now = time.monotonic()
        for what, started in list(self._calls.values()):
            if now - started > limit:
                log.error("broker call %r stuck for %.0f s: restarting this worker child",
                          what, now - started)
                logging.shutdown()
                os._exit(STALLED_EXIT)

    # -- heartbeat ------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        last_prune = 0.0
        while not self._stopping.wait(interval):
            try:
                sent = time.monotonic()
                with self._cond:
                    leases = [Lease(j.id, j.lease_token or "") for j in self._held.values()]
                with self._in_broker("heartbeat"):
                    lost = self.broker.extend(leases, self.lease_seconds)
                    self._renewed(leases, lost, sent + self.lease_seconds)
                    self._announce()
                    self.broker.recover()
                with self._cond:  # a job that ran may have been finished since the snapshot:
                    # not lost (were its lease lost, its finish is fenced and says so)
                    lost = [i for i in lost if i in self._held and i not in self._ran]
                for job_id in lost:
                    log.warning("job %s: lease lost (expired and recovered elsewhere)", job_id)
                now = time.monotonic()
                if now - last_prune > 600:
                    last_prune = now
                    wall = self.app.clock.now()
                    s = self.app.settings
                    self.broker.prune(wall - s.succeeded_retention_seconds,
                                      wall - s.dead_retention_seconds)
            except Exception as exc:
                log.warning("heartbeat failed (%s: %s)", type(exc).__name__, exc)

    def _renewed(self, leases: list[Lease], lost: list[str], due: float) -> None:
        """An extend sent before ``due - lease`` renewed these leases but the lost ones:
        the unstarted jobs among them may start until ``due`` (see _lease_lapsing)."""
        gone = set(lost)
        with self._cond:
            for lease in leases:
                if lease.job_id in self._lease_due:
                    self._lease_due[lease.job_id] = 0.0 if lease.job_id in gone else due

    def _announce(self) -> None:
        with self._cond:
            held = tuple(self._held)
            counters = dict(self._counters)
        with contextlib.suppress(Exception):
            self.broker.register_worker(WorkerInfo(
                id=self.id, host=socket.gethostname(), pid=os.getpid(),
                queues=self.queues.names,
                tasks={name: t.version for name, t in self.app.tasks.items()},
                started_at=self.started_at, jobs=held, counters=counters,
                threads=self.threads))

    # -- shutdown -------------------------------------------------------------------------
    def _hand_back_unstarted(self, why: str) -> None:
        """Release the jobs no executor has taken yet: other workers may run them."""
        unstarted = self._inbox.take_all()
        if not unstarted:
            return
        with contextlib.suppress(Exception):
            self.broker.release([Lease(j.id, j.lease_token or "") for j in unstarted])
        with self._cond:
            for j in unstarted:
                self._held.pop(j.id, None)
                self._lease_due.pop(j.id, None)
            self._free += len(unstarted)
        self.reporter.done([j.id for j in unstarted])
        log.info("handed back %d unstarted job(s): %s", len(unstarted), why)

    def _shutdown(self, executors: list[threading.Thread], finisher: threading.Thread) -> None:
        self._hand_back_unstarted("stopping")
        self._inbox.close(len(executors))
        deadline = time.monotonic() + self.grace_seconds
        for t in executors:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in executors):
            log.warning("grace period over with jobs still running; their leases will expire")
        with self._cond:
            self._closing = True
            self._flush.notify_all()
        finisher.join(max(5.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self.broker.unregister_worker(self.id)


def _before_finish(outcomes: list[Outcome]) -> None:
    crash_point("before_finish")
    if any(o.status is JobStatus.SCHEDULED for o in outcomes):
        crash_point("finish_retry")
    if any(o.status is JobStatus.DEAD for o in outcomes):
        crash_point("finish_dead")


def child_main(argv: list[str] | None = None) -> int:
    """Entry point of a child process started by the supervisor."""
    import argparse
    import sys

    from ..app import load_app

    parser = argparse.ArgumentParser(prog="chervil-child")
    parser.add_argument("app")
    parser.add_argument("--queues", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--report-fd", type=int, default=-1)
    parser.add_argument("--table-fd", type=int, default=-1)
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--log-level", default="WARNING")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    sys.path.insert(0, os.getcwd())
    app = load_app(ns.app)
    return run_child(app, QueueSpec.parse(ns.queues), ns.threads, worker_id=ns.worker_id,
                     burst=ns.burst, max_jobs=ns.max_jobs, grace_seconds=ns.grace,
                     report_fd=ns.report_fd if ns.report_fd >= 0 else None,
                     table_fd=ns.table_fd if ns.table_fd >= 0 else None,
                     prefetch=ns.prefetch)


def run_child(app: Chervil, queues: QueueSpec, threads: int, *, worker_id: str,
              burst: bool = False, max_jobs: int | None = None, grace_seconds: float = 30.0,
              report_fd: int | None = None, table_fd: int | None = None,
              prefetch: int = DEFAULT_PREFETCH) -> int:
    """Run one child until it stops; its exit code. (Forked or started as a program.)"""
    child = Child(app, queues, threads, worker_id=worker_id, burst=burst, max_jobs=max_jobs,
                  grace_seconds=grace_seconds, reporter=Reporter(report_fd, table_fd),
                  prefetch=prefetch)
    child.install_signal_handlers()
    code = child.run()
    app.close()
    return code


if __name__ == "__main__":
    raise SystemExit(child_main())
