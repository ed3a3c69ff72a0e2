"""Running drivers and workers, and measuring them: rates, latency, CPU, Redis commands."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .venvs import PEERS_DIR, ROOT

DONE = "bench:done"
LAT = "bench:lat"
CLK = os.sysconf("SC_CLK_TCK")
LOGS = ROOT / ".bench" / "logs"


class DriverError(Exception):
    pass


@dataclass
class Lib:
    """A queue library as driven here: its driver module, interpreter and environment."""

    name: str
    module: str
    python: str
    env: dict[str, str]
    reset: Callable[[Lib], None]
    bulk: str | None = None  # the bulk API's name, None if it has none
    latency: bool = True  # can send timestamped jobs to an idle worker


@dataclass
class Variant:
    """One worker configuration of a library: a row of the table."""

    label: str
    argv: list[str]
    drain_cap: int | None = None  # jobs, for configs that are far slower than the rest
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def rclient(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def run_driver(lib: Lib, cmd: str, *args: Any, timeout: float = 300) -> dict[str, Any]:
    argv = [lib.python, "-c", "import benchtask; benchtask.run()", lib.module, cmd,
            *[str(a) for a in args]]
    try:
        proc = subprocess.run(argv, cwd=PEERS_DIR, env=lib.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DriverError(f"{lib.module} {cmd} timed out after {timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        raise DriverError(f"{lib.module} {cmd} failed (exit {proc.returncode}): "
                          f"{' | '.join(tail)}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


# -- process trees ---------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ppid, ticks / CLK


def tree(root: int) -> dict[int, float]:
    """CPU seconds of every live process under ``root`` (reaped children via cutime)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            s = _stat(int(entry))
            if s is not None:
                stats[int(entry)] = s
    found = {root: stats[root][1]} if root in stats else {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, cpu) in stats.items():
            if ppid == parent and pid not in found:
                found[pid] = cpu
                frontier.append(pid)
    return found


def start_worker(lib: Lib, variant: Variant, log_name: str) -> subprocess.Popen[bytes]:
    LOGS.mkdir(parents=True, exist_ok=True)
    log = (LOGS / f"{log_name}.log").open("wb")
    # the peers dir first (the driver modules), then the caller's path: a worktree put
    # there (A/B runs of another revision) is what the worker imports, as the drivers do
    path = [str(PEERS_DIR), *filter(None, [lib.env.get("PYTHONPATH")])]
    env = dict(lib.env, PYTHONPATH=os.pathsep.join(path))
    return subprocess.Popen(variant.argv, cwd=PEERS_DIR, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _worker_died(proc: subprocess.Popen[bytes], log_name: str) -> DriverError:
    tail = (LOGS / f"{log_name}.log").read_text(errors="replace").strip().splitlines()[-3:]
    return DriverError(f"worker exited with {proc.returncode}: {' | '.join(tail)}")


def commandstats(r: redis.Redis) -> dict[str, int]:
    info = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


# -- measurements ----------------------------------------------------------------------
def rate(result: dict[str, Any]) -> float | None:
    if "na" in result or not result.get("seconds"):
        return None
    return float(result["n"]) / float(result["seconds"])


def drain(lib: Lib, variant: Variant, r: redis.Redis, n: int, max_seconds: float,
          count_commands: bool = False, waiting: int | None = None,
          fill_seconds: float | None = None) -> dict[str, Any]:
    """N jobs waiting, then one worker command: seconds until the counter reaches N.

    With ``waiting``, that many jobs wait (filled with the bulk API for at most
    ``fill_seconds``) and the clock still stops at the N-th completion.
    """
    if variant.drain_cap:
        n = min(n, variant.drain_cap)
    lib.reset(lib)
    if waiting is None:
        n = int(run_driver(lib, "fill", n, timeout=600).get("n", n))
    else:
        limit = fill_seconds or 1e9
        filled = run_driver(lib, "bulk", waiting, limit, timeout=limit + 600)
        waiting = int(filled["n"])
        n = min(n, waiting)
    before = commandstats(r) if count_commands else {}
    log_name = f"{lib.name}-{variant.label}".replace(" ", "_").replace("/", "_")
    polls = 0
    start = time.perf_counter()
    proc = start_worker(lib, variant, log_name)
    try:
        first_at = first_count = None
        count = 0
        deadline = start + max_seconds
        cpu_tree: dict[int, float] = {}
        while True:
            count = int(r.get(DONE) or 0)
            polls += 1
            now = time.perf_counter()
            if count and first_at is None:
                first_at, first_count = now, count
            if count >= n or now > deadline:
                break
            if proc.poll() is not None:
                raise _worker_died(proc, log_name)
            if polls % 200 == 0:
                cpu_tree = tree(proc.pid) or cpu_tree
            time.sleep(0.005)
        end = time.perf_counter()
        cpu_tree = tree(proc.pid) or cpu_tree
    finally:
        stop_worker(proc)
    seconds = end - start
    out: dict[str, Any] = {
        "n": n, "done": count, "seconds": seconds, "rate": count / seconds,
        "partial": count < n, "first_job_s": (first_at - start) if first_at else None,
        "steady_rate": ((count - first_count) / (end - first_at))
        if first_at and first_count is not None and end > first_at else None,
        "worker_cpu_us_per_job": sum(cpu_tree.values()) / max(count, 1) * 1e6,
        "processes": len(cpu_tree), "waiting": waiting if waiting is not None else n,
    }
    if count_commands:
        after = commandstats(r)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta["get"] = delta.get("get", 0) - polls
        own = "incrby" if delta.get("incrby", 0) >= count else "incr"  # redis-py: INCRBY
        delta[own] = delta.get(own, 0) - count
        delta.pop("info", None)  # the harness's own INFO calls
        delta = {k: v for k, v in delta.items() if v > 0}
        out["redis_cmds_per_job"] = sum(delta.values()) / max(count, 1)
        out["redis_cmds"] = {k: round(v / max(count, 1), 3) for k, v in
                             sorted(delta.items(), key=lambda kv: -kv[1])[:12]}
    return out


def _wait_len(r: redis.Redis, k: int, timeout: float, proc: subprocess.Popen[bytes],
              log_name: str) -> None:
    deadline = time.perf_counter() + timeout
    while r.llen(LAT) < k:
        if proc.poll() is not None:
            raise _worker_died(proc, log_name)
        if time.perf_counter() > deadline:
            raise DriverError(f"only {r.llen(LAT)}/{k} latency jobs ran in {timeout:.0f} s")
        time.sleep(0.01)


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def pings(r: redis.Redis, n: int = 200, gap_ms: float = 10) -> dict[str, Any]:
    """Redis PINGs from the harness (p50, p99 in µs): back to back ("busy"), and each
    after ``gap_ms`` idle ("idle"), as the latency runs send their jobs. On a VM the
    wake-up of an idle CPU can cost more than the work: it is the floor under every
    library's pickup."""
    out: dict[str, Any] = {"gap_ms": gap_ms}
    for label, gap in (("busy", 0.0), ("idle", gap_ms / 1000)):
        samples = []
        for _ in range(n):
            if gap:
                time.sleep(gap)
            t = time.perf_counter()
            r.ping()
            samples.append((time.perf_counter() - t) * 1e6)
        out[label] = [nearest_rank(samples, 50), nearest_rank(samples, 99)]
    return out


def latency(lib: Lib, variant: Variant, r: redis.Redis, k: int = 200, gap_ms: float = 10,
            idle_seconds: float = 5.0) -> dict[str, Any]:
    """Idle worker: CPU over ``idle_seconds``, then pickup latency of k jobs gap_ms apart."""
    lib.reset(lib)
    log_name = f"{lib.name}-{variant.label}-latency".replace(" ", "_").replace("/", "_")
    proc = start_worker(lib, variant, log_name)
    try:
        run_driver(lib, "send", 1, 0.0, timeout=60)  # warm-up job, awaited
        _wait_len(r, 1, 60, proc, log_name)
        r.delete(LAT)
        time.sleep(1.0)
        cpu0 = sum(tree(proc.pid).values())
        t0 = time.perf_counter()
        time.sleep(idle_seconds)
        idle = (sum(tree(proc.pid).values()) - cpu0) / (time.perf_counter() - t0) * 100
        run_driver(lib, "send", k, float(gap_ms), timeout=120)
        _wait_len(r, k, 60, proc, log_name)
        samples = [float(x) * 1000 for x in r.lrange(LAT, 0, -1)]
    finally:
        stop_worker(proc)
    return {"p50_ms": nearest_rank(samples, 50), "p99_ms": nearest_rank(samples, 99),
            "idle_cpu_pct": idle}
