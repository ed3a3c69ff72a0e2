"""The supervisor: starts ``-p`` children, enforces hard time limits, replaces the dead.

It reads each child's report pipe and started-jobs table (``report.py``) so it always
knows which jobs a child holds and which it has started. When a job overruns its
``timeout`` the supervisor kills that child, fails the job with ``time_limit`` (its retry
policy decides what next) and hands the child's other jobs back at once without spending
an attempt. When a child
dies on its own, the job it was running counts a lost lease at once, and the rest are
handed back.

Signals: the first SIGTERM or SIGINT drains (children stop reserving, hand back what
they have not started, finish the rest within the grace period); a second one kills.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..app import Chervil
from ..brokers import broker_module
from ..brokers.base import Lease
from ..job import DeadReason, ErrorInfo
from ..runner import failure
from ..schedule import Scheduler
from .child import DEFAULT_PREFETCH, run_child
from .queues import QueueSpec
from .report import StartedTable, table_size

log = logging.getLogger("chervil.worker")


class ForkedChild:
    """A child started by fork, with the part of ``subprocess.Popen`` the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class ChildState:
    index: int
    proc: subprocess.Popen[bytes] | ForkedChild
    fd: int
    buf: bytes = b""
    table: StartedTable | None = None
    held: dict[str, str] = field(default_factory=dict)  # job id -> lease token
    reported: dict[str, float | None] = field(default_factory=dict)  # S lines: id -> deadline
    overrun: str | None = None  # job id it was killed for

    def started(self) -> dict[str, float | None]:
        """Held jobs the child started -> their hard deadline (None: no limit)."""
        out = dict(self.reported)
        if self.table is not None:
            out.update(self.table.read())
        return {k: v for k, v in out.items() if k in self.held}


@dataclass(frozen=True)
class WorkerOptions:
    queues: QueueSpec
    processes: int = 1
    threads: int = 4
    burst: bool = False
    max_jobs_per_child: int | None = None
    grace_seconds: float = 30.0
    log_level: str = "WARNING"
    scheduler: bool = True  # run the cron scheduler loop (one active across all workers)
    max_memory_mb: float | None = None  # a child over this resident size is killed
    prefetch: int = DEFAULT_PREFETCH  # most jobs held beyond the threads (short jobs only)


class Supervisor:
    def __init__(self, app_path: str, app: Chervil, options: WorkerOptions) -> None:
        self.app_path = app_path
        self.app = app
        self.options = options
        self.children: dict[int, ChildState] = {}
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self.killing = False
        self.exit_code = 0
        # any task with a hard time limit: look at the started jobs every 50 ms
        self.time_limits = any(t.options.timeout for t in app.tasks.values())

    # -- signals --------------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            log.warning("second signal: stopping hard")
            self.killing = True
            for c in self.children.values():
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()
            return
        log.warning("received %s: draining (send again to stop hard)",
                    signal.Signals(signum).name)
        self.stopping = True
        for c in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                c.proc.send_signal(signal.SIGTERM)

    # -- children -------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        o = self.options
        with tempfile.TemporaryFile(prefix="chervil-started-") as f:
            f.truncate(table_size(o.threads, o.prefetch))
            table_fd = os.dup(f.fileno())
        worker_id = f"{socket.gethostname()}:{os.getpid()}:{index}:{time.time():.0f}"
        proc: subprocess.Popen[bytes] | ForkedChild
        if hasattr(os, "fork") and threading.active_count() == 1:
            proc = self._fork(worker_id, read_fd, write_fd, table_fd)
        else:  # threads run here (a respawn): a fresh interpreter, which imports the app
            cmd = [sys.executable, "-m", "chervil.worker.child", self.app_path,
                   "--queues", str(o.queues), "--threads", str(o.threads),
                   "--worker-id", worker_id, "--report-fd", str(write_fd),
                   "--table-fd", str(table_fd), "--grace", str(o.grace_seconds),
                   "--log-level", o.log_level]
            if o.burst:
                cmd.append("--burst")
            if o.max_jobs_per_child:
                cmd += ["--max-jobs", str(o.max_jobs_per_child)]
            cmd += ["--prefetch", str(o.prefetch)]
            proc = subprocess.Popen(cmd, pass_fds=(write_fd, table_fd), cwd=os.getcwd())
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        state = ChildState(index, proc, read_fd, table=StartedTable(table_fd))
        os.close(table_fd)
        self.children[index] = state
        self.selector.register(read_fd, selectors.EVENT_READ, state)
        log.info("child %d started (pid %d)", index, proc.pid)

    def _fork(self, worker_id: str, read_fd: int, write_fd: int, table_fd: int
              ) -> ForkedChild:
        """Start a child by fork: it runs the app imported here, so it starts at once.

        Only while no other thread runs in the supervisor (the first children, before the
        scheduler and relay threads start), so no lock can be inherited held.
        """
        o = self.options
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid:
            return ForkedChild(pid)
        code = 70  # EX_SOFTWARE, if the child fails before it runs
        try:
            os.close(read_fd)
            for c in self.children.values():
                os.close(c.fd)
            self.selector.close()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self.app.reset_after_fork()
            code = run_child(self.app, o.queues, o.threads, worker_id=worker_id,
                             burst=o.burst, max_jobs=o.max_jobs_per_child,
                             grace_seconds=o.grace_seconds, report_fd=write_fd,
                             table_fd=table_fd, prefetch=o.prefetch)
        except BaseException:
            log.exception("worker child failed")
        finally:
            logging.shutdown()
            os._exit(code)

    def _read(self, c: ChildState) -> None:
        while True:
            try:
                data = os.read(c.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            c.buf += data
            *lines, c.buf = c.buf.split(b"\n")
            for line in lines:
                self._apply(c, line.decode().split())

    @staticmethod
    def _apply(c: ChildState, parts: list[str]) -> None:
        if not parts:
            return
        kind, rest = parts[0], parts[1:]
        if kind == "H":
            for i in range(0, len(rest) - 1, 2):
                c.held[rest[i]] = rest[i + 1]
        elif kind == "S" and len(rest) == 2:
            c.reported[rest[0]] = None if rest[1] == "-" else float(rest[1])
        elif kind == "D":
            for job_id in rest:
                c.held.pop(job_id, None)
                c.reported.pop(job_id, None)

    def _check_deadlines(self) -> None:
        now = time.time()
        for c in self.children.values():
            if c.overrun is not None:
                continue
            for job_id, deadline in c.started().items():
                if deadline is not None and now > deadline:
                    log.warning("job %s ran past its time limit: killing child %d (pid %d)",
                                job_id, c.index, c.proc.pid)
                    c.overrun = job_id
                    with contextlib.suppress(ProcessLookupError):
                        c.proc.kill()
                    break

    def _check_memory(self) -> None:
        """Kill a child whose resident memory passed the cap (as the kernel's OOM killer
        would, but only that child): its started jobs count a lost lease."""
        cap = self.options.max_memory_mb
        if cap is None:
            return
        page = os.sysconf("SC_PAGE_SIZE")
        for c in self.children.values():
            try:
                with open(f"/proc/{c.proc.pid}/statm") as f:
                    rss_mb = int(f.read().split()[1]) * page / 2**20
            except (OSError, ValueError, IndexError):
                continue
            if rss_mb > cap:
                log.warning("child %d (pid %d) uses %.0f MB, over --max-memory-per-child "
                            "%.0f MB: killing it (running: %s)", c.index, c.proc.pid, rss_mb,
                            cap, ", ".join(c.started()) or "nothing")
                with contextlib.suppress(ProcessLookupError):
                    c.proc.kill()

    def _reap(self, c: ChildState) -> None:
        self._read(c)
        self.selector.unregister(c.fd)
        os.close(c.fd)
        del self.children[c.index]
        started = c.started()
        if c.table is not None:
            c.table.close()
        code = c.proc.returncode
        broker = self.app.broker
        try:
            if c.overrun is not None:
                self._fail_time_limit(c.overrun, c.held.get(c.overrun, ""))
                c.held.pop(c.overrun, None)
                broker.release([Lease(i, t) for i, t in c.held.items()])
            elif c.held:
                lost = [Lease(i, t) for i, t in c.held.items() if i in started]
                unstarted = [Lease(i, t) for i, t in c.held.items() if i not in started]
                if lost:
                    broker.recover(lost)
                if unstarted:
                    broker.release(unstarted)
                log.warning("child %d (pid %d) exited with %s holding %d job(s): %d counted "
                            "as lost, %d handed back", c.index, c.proc.pid, code, len(c.held),
                            len(lost), len(unstarted))
        except Exception as exc:
            log.warning("could not settle the jobs of child %d (%s); their leases will "
                        "expire and be recovered", c.index, exc)
        if code != 0 and not self.stopping and c.overrun is None:
            log.warning("child %d (pid %d) died with exit code %s; replacing it",
                        c.index, c.proc.pid, code)
        respawn = not self.stopping and not (self.options.burst and code == 0)
        if respawn:
            self._spawn(c.index)

    def _fail_time_limit(self, job_id: str, token: str) -> None:
        job = self.app.broker.get(job_id)
        if job is None or job.lease_token != token:
            return
        task = self.app.tasks.get(job.task)
        limit = task.options.timeout if task else None
        error = ErrorInfo("TimeLimitExceeded", f"ran past its {limit} s hard time limit; "
                          "the worker child running it was killed")
        if task is None:
            from ..runner import dead

            outcome = dead(job, DeadReason.TIME_LIMIT, error.message)
        else:
            outcome = failure(task, job, None, error, self.app.clock.now(),
                              final_reason=DeadReason.TIME_LIMIT)
        self.app.broker.finish([outcome])

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        stop_scheduler = threading.Event()
        owner = f"{socket.gethostname()}:{os.getpid()}"
        broker_module(self.app.settings.broker_url)  # imported once, before the forks
        for i in range(self.options.processes):  # first: forked while no thread runs
            self._spawn(i)
        if self.options.scheduler and self.app.schedules and not self.options.burst:
            threading.Thread(target=Scheduler(self.app, owner).run, args=(stop_scheduler,),
                             name="chervil-scheduler", daemon=True).start()
        if self.app.uses_outbox and not self.options.burst:
            threading.Thread(target=self.app.outbox().run, args=(stop_scheduler, owner),
                             name="chervil-relay", daemon=True).start()
        log.info("worker started: %d process(es) x %d thread(s), queues %s",
                 self.options.processes, self.options.threads, self.options.queues)
        looked = 0.0
        while self.children:
            timeout = 0.05 if self.time_limits else 0.5
            for key, _ in self.selector.select(timeout):
                self._read(key.data)
            now = time.monotonic()
            if now - looked >= timeout:  # not at every report line
                looked = now
                if self.time_limits:
                    self._check_deadlines()
                self._check_memory()
            for c in list(self.children.values()):
                if c.proc.poll() is not None:
                    self._reap(c)
            if self.stopping:
                stop_scheduler.set()
        stop_scheduler.set()
        self.app.close()
        return self.exit_code


def run_worker(app_path: str, app: Chervil, options: WorkerOptions) -> int:
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    return Supervisor(app_path, app, options).run()
