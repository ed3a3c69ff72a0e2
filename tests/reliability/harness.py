"""The reliability harness: real worker and producer processes, a fault log, a checker.

``Cluster`` starts ``chervil worker`` processes (each in its own process group) and
producer processes against one broker URL, with the probe app (``probeapp.py``) whose
tasks write to an external ledger. ``FaultLog`` records every fault (what, when, which
pids) *before* it is applied. ``check`` reads the producer logs, the ledger, the fault
log and the broker, and classifies every job (see :class:`Report`).

Every run logs its seed; everything lives in the run's directory (pytest's tmp dir,
kept for the last runs), whose path is printed on failure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chervil.brokers import open_broker
from chervil.brokers.base import Broker
from chervil.clock import SystemClock
from chervil.job import Job, JobStatus

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED}


# -- brokers ---------------------------------------------------------------------------
def broker_url(kind: str, tmp: Path, name: str) -> str:
    from tests.conftest import POSTGRES_URL, REDIS_URL

    if kind == "sqlite":
        return f"sqlite:///{tmp}/broker.db"
    base = REDIS_URL if kind == "redis" else POSTGRES_URL
    key, value = ("prefix", f"chervil-rel-{name}") if kind == "redis" else (
        "schema", f"chervil_rel_{name}")
    return f"{base}{'&' if '?' in base else '?'}{key}={value}"


def require(kind: str) -> None:
    from tests.conftest import postgres_available, redis_available

    if kind == "redis":
        redis_available()
    elif kind == "postgres":
        postgres_available()


def destroy(kind: str, name: str) -> None:
    from tests.conftest import drop_namespace

    drop_namespace(kind, f"chervil-rel-{name}" if kind == "redis" else f"chervil_rel_{name}")


# -- faults ----------------------------------------------------------------------------
class FaultLog:
    """One JSON line per fault, written (and flushed) before the fault is applied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def record(self, what: str, target: str, pids: Iterable[int], **extra: Any) -> float:
        at = time.time()
        with open(self.path, "a") as f:
            f.write(json.dumps({"at": at, "what": what, "target": target,
                                "pids": sorted(pids), **extra}) + "\n")
        self.count += 1
        return at

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def outages(self) -> list[tuple[float, float]]:
        """(down, up) windows of the broker (``broker_down`` / ``broker_up`` entries)."""
        out: list[tuple[float, float]] = []
        down = None
        for e in self.entries():
            if e["what"] == "broker_down":
                down = e["at"]
            elif e["what"] == "broker_up" and down is not None:
                out.append((down, e["at"]))
                down = None
        if down is not None:
            out.append((down, float("inf")))
        return out

    def killed(self) -> dict[int, float]:
        """pid -> time of the first fault that killed it."""
        out: dict[int, float] = {}
        for e in self.entries():
            for pid in e["pids"]:
                out.setdefault(pid, e["at"])
        return out


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


# -- processes -------------------------------------------------------------------------
class Cluster:
    def __init__(self, tmp: Path, url: str, seed: int | str, lease: float = 2.0,
                 **settings: str) -> None:
        self.tmp = tmp
        self.url = url
        self.seed = seed
        self.lease = lease
        self.ledger_path = tmp / "ledger.db"
        # Made here, before any worker thread opens it: six threads switching a new
        # file to WAL and creating its tables at once get "database is locked".
        from .probeapp import connect

        connect(str(self.ledger_path)).close()
        self.faults = FaultLog(tmp / "faults.jsonl")
        self.env = {**os.environ, "CHERVIL_BROKER_URL": url,
                    "CHERVIL_LEASE_SECONDS": str(lease),
                    "CHERVIL_RELIABILITY_LEDGER": str(self.ledger_path),
                    "PYTHONPATH": f"{HERE}{os.pathsep}{ROOT}"}
        self.env.pop("CHERVIL_CRASH_AT", None)
        for k, v in settings.items():
            self.env[f"CHERVIL_{k.upper()}"] = v
        self.procs: list[subprocess.Popen[bytes]] = []
        self.producer_logs: list[Path] = []
        self.producer_procs: dict[Path, subprocess.Popen[bytes]] = {}
        self._n = 0
        self._brokers: list[Broker] = []
        with open(tmp / "seed.txt", "w") as f:
            f.write(f"{seed}\n{url}\n")

    def _start(self, kind: str, cmd: list[str], env: dict[str, str] | None = None,
               module_dir: Path = HERE) -> subprocess.Popen[bytes]:
        self._n += 1
        log = self.tmp / f"{kind}-{self._n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env={**self.env, **(env or {})}, cwd=str(module_dir),
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, app: str = "probeapp:app",
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._start("worker", [sys.executable, "-m", "chervil.cli", "worker", app,
                                      "--log-level", "WARNING", *args], env)

    def scheduler(self, app: str, env: dict[str, str] | None = None
                  ) -> subprocess.Popen[bytes]:
        return self._start("scheduler", [sys.executable, "-m", "chervil.cli", "scheduler", app,
                                         "--log-level", "WARNING"], env)

    def child(self, queues: str, env: dict[str, str] | None = None,
              app: str = "probeapp:app") -> subprocess.Popen[bytes]:
        """A worker child alone (no supervisor): a crash point ends it for good."""
        return self._start("child", [sys.executable, "-m", "chervil.worker.child", app,
                                     "--queues", queues, "--threads", "2",
                                     "--worker-id", f"crash-{self._n}"], env)

    def producer(self, name: str, count: int, rate: float, batch: int = 1,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"produced-{name}.txt"
        self.producer_logs.append(log)
        proc = self._start("producer", [sys.executable, str(HERE / "producer.py"), str(log),
                                        str(self.seed), str(count), str(rate), name,
                                        str(batch)], env)
        self.producer_procs[log] = proc
        return proc

    def script(self, code: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return self._start("script", [sys.executable, "-c", code], env)

    def kill_group(self, proc: subprocess.Popen[bytes], what: str = "kill_worker") -> None:
        """SIGKILL a worker and its children (its process group), logging it first."""
        pids = [proc.pid, *children_of(proc.pid)]
        self.faults.record(what, f"worker {proc.pid}", pids)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def kill_child(self, proc: subprocess.Popen[bytes]) -> bool:
        kids = children_of(proc.pid)
        if not kids:
            return False
        self.faults.record("kill_child", f"worker {proc.pid}", kids[:1])
        with contextlib.suppress(ProcessLookupError):
            os.kill(kids[0], signal.SIGKILL)
        return True

    def broker(self) -> Broker:
        b = open_broker(self.url, SystemClock())
        self._brokers.append(b)
        return b

    def log_text(self) -> str:
        return "\n".join(p.log.read_text(errors="replace")  # type: ignore[attr-defined]
                         for p in self.procs if p.log.exists())  # type: ignore[attr-defined]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    p.kill()
                p.wait()
        for b in self._brokers:
            b.close()


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition",
             every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the ledger ------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    job: str
    idem: str
    key: str
    attempt: int
    pid: int
    token: str | None
    start: float
    end: float | None
    outcome: str


def read_ledger(path: Path) -> tuple[list[Run], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    if not path.exists():
        return [], [], []
    conn = sqlite3.connect(path, timeout=60)
    try:
        runs = [Run(*r) for r in conn.execute(
            "SELECT job, idem, key, attempt, pid, token, start, end, outcome FROM runs "
            "ORDER BY start")]
        effects = conn.execute("SELECT idem, key, job FROM effects").fetchall()
        ignored = conn.execute("SELECT idem, key, job, attempt, pid FROM ignored").fetchall()
    finally:
        conn.close()
    return runs, effects, ignored


def read_produced(paths: Iterable[Path]) -> tuple[dict[str, str], set[str], set[str]]:
    """(tried id -> key, ids whose enqueue returned, ids whose enqueue raised)."""
    tried: dict[str, str] = {}
    ok: set[str] = set()
    failed: set[str] = set()
    for p in paths:
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue  # a line cut by a crash
            if parts[0] == "T" and len(parts) == 3:
                tried[parts[1]] = parts[2]
            elif parts[0] == "O":
                ok.add(parts[1])
            elif parts[0] == "E":
                failed.add(parts[1])
    return tried, ok, failed


# -- the checker -----------------------------------------------------------------------
@dataclass
class Report:
    seed: Any
    enqueued_ok: int = 0
    enqueue_errors: int = 0
    executions: int = 0
    faults: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    explained_reruns: int = 0  # a rerun after a lost lease (fault) or a planned failure
    deduplicated_effects: int = 0  # re-executions whose effect the idempotency key stopped
    recovered: list[str] = field(default_factory=list)  # enqueue raised, yet the job exists
    # violations: all must be empty
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    unexplained_duplicates: list[str] = field(default_factory=list)
    duplicate_effects: list[str] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)
    wrong_outcome: list[str] = field(default_factory=list)
    phantom_commits: list[str] = field(default_factory=list)

    VIOLATIONS = ("lost", "unexpected", "unexplained_duplicates", "duplicate_effects",
                  "overlaps", "wrong_outcome", "phantom_commits")

    def violations(self) -> dict[str, list[str]]:
        return {k: getattr(self, k)[:10] for k in self.VIOLATIONS if getattr(self, k)}

    def table(self) -> str:
        rows = [("seed", self.seed), ("enqueued ok", self.enqueued_ok),
                ("enqueue errors", self.enqueue_errors),
                ("recovered (raised, yet exists)", len(self.recovered)),
                ("executions", self.executions), ("faults", self.faults),
                ("statuses", dict(self.statuses)),
                ("explained reruns", self.explained_reruns),
                ("deduplicated effects", self.deduplicated_effects)]
        rows += [(k.replace("_", " "), len(getattr(self, k))) for k in self.VIOLATIONS]
        return "\n".join(f"  {k:<32} {v}" for k, v in rows)


def all_jobs(broker: Broker, ids: Iterable[str]) -> dict[str, Job | None]:
    return {i: broker.get(i) for i in ids}


# The fault log is written just before the signal is sent, so a run may start in the
# instant between: a kill logged this long before a run's start still cut that run.
KILL_SLACK = 1.0


def check(cluster: Cluster, expect: Callable[[Job], bool] | None = None) -> Report:
    """Classify every job of the run. ``expect(job)``: is this terminal state correct?
    (default: succeeded, or dead ``worker_lost`` after max lost leases to faults)."""
    tried, ok, failed = read_produced(cluster.producer_logs)
    runs, effects, ignored = read_ledger(cluster.ledger_path)
    killed = cluster.faults.killed()
    outages = cluster.faults.outages()

    def outage_between(a: Run, b: Run) -> bool:
        """``a`` ran into a broker outage that began before ``b`` started: its heartbeats
        failed, so its lease could expire and be recovered (the rerun is a lost lease).
        A run that ended shortly before the outage counts too: its outcome waits in the
        worker to be recorded (batched with the next reserve) while its lease runs out."""
        slack = cluster.lease
        return any(down <= b.start and (a.end is None or a.end >= down - slack)
                   and a.start <= up for down, up in outages)
    broker = cluster.broker()
    jobs = all_jobs(broker, tried)
    r = Report(cluster.seed, enqueued_ok=len(ok), enqueue_errors=len(failed),
               executions=len(runs), faults=cluster.faults.count or len(
                   cluster.faults.entries()))
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_job[run.job].append(run)
    for job_id, job in jobs.items():
        r.statuses[job.status.value if job else "missing"] += 1
        if job_id in ok and (job is None or job.status not in TERMINAL):
            r.lost.append(job_id)
        if job_id in failed and job is not None:
            r.recovered.append(job_id)
        if job is not None and job_id not in ok and job_id not in failed:
            r.phantom_commits.append(job_id)  # exists, but its producer never learnt it
    died = [p for p, proc in cluster.producer_procs.items() if proc.returncode != 0]
    excused, _, _ = read_produced(died)
    r.phantom_commits = [j for j in r.phantom_commits if j not in excused]
    r.unexpected = sorted(set(by_job) - set(tried))
    for job_id, rs in by_job.items():
        job = jobs.get(job_id)
        for a, b in itertools.pairwise(rs):
            end = a.end
            if a.pid in killed and killed[a.pid] >= a.start - KILL_SLACK and (
                    end is None or killed[a.pid] < end):
                end = max(a.start, killed[a.pid])  # killed mid-run
            if (end is None or b.start < end) and not outage_between(a, b):
                r.overlaps.append(f"{job_id}: attempt {a.attempt} pid {a.pid} "
                                  f"[{a.start:.3f}, {a.end}] vs attempt {b.attempt} "
                                  f"started {b.start:.3f}")
        for a, b in itertools.pairwise(rs):
            lost_lease = (a.pid in killed
                          and a.start - KILL_SLACK <= killed[a.pid] <= b.start)
            if a.outcome == "fail" or lost_lease or outage_between(a, b):
                r.explained_reruns += 1
            else:
                r.unexplained_duplicates.append(
                    f"{job_id}: attempt {a.attempt} in pid {a.pid} ended {a.outcome} "
                    f"and no fault hit it, yet it ran again")
        if job is not None and job.attempts < len(rs):
            r.unexplained_duplicates.append(
                f"{job_id}: {len(rs)} executions but attempts = {job.attempts}")
        if job is not None and job.status in TERMINAL and not (
                expect(job) if expect else _default_expect(job, rs, killed)):
            r.wrong_outcome.append(f"{job_id}: {job.status.value} {job.dead_reason} "
                                   f"attempts={job.attempts} lost={job.lost_leases} "
                                   f"runs={[(x.attempt, x.outcome) for x in rs]}")
    for job_id, job in jobs.items():
        if job is not None and job.status is JobStatus.SUCCEEDED and job_id not in by_job:
            r.wrong_outcome.append(f"{job_id}: succeeded but never ran")
    per_key = Counter(key for _, key, _ in effects)
    r.duplicate_effects = [k for k, n in per_key.items() if n > 1]
    for idem, _key, job_id, attempt, pid in ignored:
        prior = [x for x in by_job.get(job_id, []) if x.attempt < attempt]
        if any(x.pid in killed and x.outcome != "fail" for x in prior) or (
                outages and job_id in jobs and (jobs[job_id] or _NOJOB).lost_leases > 0):
            r.deduplicated_effects += 1
        else:
            r.duplicate_effects.append(f"{idem}: effect attempted again by attempt "
                                       f"{attempt} (pid {pid}) without a lost lease")
    return r


class _NoJob:
    lost_leases = 0


_NOJOB = _NoJob()


def _default_expect(job: Job, runs: list[Run], killed: dict[int, float]) -> bool:
    if job.status is JobStatus.SUCCEEDED:
        return any(x.outcome == "ok" for x in runs)
    if job.status is JobStatus.DEAD and job.dead_reason == "worker_lost":
        return job.lost_leases >= 3 and all(x.pid in killed for x in runs)
    return False


def new_seed() -> int:
    env = os.environ.get("CHERVIL_SOAK_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 31)


def wait_terminal(broker: Broker, ids: list[str], timeout: float = 60.0) -> list[Job]:
    """Wait until every job of ``ids`` is terminal; return them in order."""
    def ended() -> list[Job] | None:
        jobs = [broker.get(i) for i in ids]
        done = [j for j in jobs if j is not None and j.status in TERMINAL]
        return done if len(done) == len(ids) else None

    return wait_for(ended, timeout=timeout, what=f"{len(ids)} job(s) to end", every=0.1)
