"""Calls mode: what one reserve and one finish cost under each flow-control option.

``python -m bench calls --broker sqlite|redis|postgres [--cycles N] [--options a,b]``:

in this process, no worker: one broker per option (its own SQLite file, Redis prefix or
PostgreSQL schema, removed afterwards), each filled with the bench's no-op task under its
option (``bench/peers/chervil_flow.py``), then cycles of a worker's fetcher in one thread:
``finish`` of the jobs held beyond the last batch, then ``reserve`` of a batch of 32. The
options take turns cycle by cycle, each leading the round in turn, so a machine that
drifts moves them all alike (the drain of ``flow`` mode swings by a quarter between reps
here; these medians move by a few per cent). It reports the median time of each call per
option and its ratio to plain.

What it leaves out, and the drain counts: the job bodies, the worker's own CPU, two
children contending for the same rows, and a concurrency limit binding in-flight jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .configs import PG_URL, REDIS_URL, TMP
from .flow import DESCRIBE, OPTIONS, _delete_prefix, _drop_schema, chervil_tree
from .report import log, write_results
from .venvs import PEERS_DIR

BATCH = 32
KEEP = 32  # jobs held across a cycle: finished at the next one, as a fetcher does


@dataclass
class Run:
    option: str
    app: Any
    task: Any
    held: list[Any] = field(default_factory=list)
    reserve_s: list[float] = field(default_factory=list)
    finish_s: list[float] = field(default_factory=list)
    jobs: int = 0


def _option_kwargs(option: str) -> dict[str, Any]:
    sys.path.insert(0, str(PEERS_DIR))
    try:
        from chervil_flow import OPTIONS as KWARGS
    finally:
        sys.path.remove(str(PEERS_DIR))
    return dict(KWARGS[option])


@contextlib.contextmanager
def _broker_url(broker: str, tag: str) -> Iterator[str]:
    if broker == "sqlite":
        path = TMP / "calls" / tag / "bench.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield f"sqlite:///{path}"
        finally:
            from chervil.brokers.wake import wake_dir

            shutil.rmtree(wake_dir(str(path)), ignore_errors=True)
            shutil.rmtree(path.parent, ignore_errors=True)
    elif broker == "redis":
        prefix = f"bench-calls-{tag}"
        try:
            yield f"{REDIS_URL}?prefix={prefix}"
        finally:
            _delete_prefix(REDIS_URL, prefix)
    else:
        schema = f"bench_calls_{tag}"
        try:
            yield f"{PG_URL}?schema={schema}"
        finally:
            _drop_schema(schema)


def _fill(option: str, url: str, n: int) -> Run:
    from chervil import Chervil

    app = Chervil(url)

    def noop(i: int, s: str, k: int = 0, t0: float = 0.0) -> None:
        return None

    task = app.task(name=f"calls_{option}", queue="bench", **_option_kwargs(option))(noop)
    for start in range(0, n, 1000):
        app.enqueue_many([task.prepare(i, f"user-{i}", i % 1000)
                          for i in range(start, min(n, start + 1000))])
    return Run(option, app, task)


def _cycle(run: Run, record: bool) -> None:
    from chervil.brokers.base import Outcome
    from chervil.job import JobStatus

    done, run.held = run.held[:-KEEP], run.held[-KEEP:]
    outcomes = [Outcome(j.id, j.lease_token, JobStatus.SUCCEEDED) for j in done]
    broker = run.app.broker
    t0 = time.perf_counter()
    broker.finish(outcomes)
    t1 = time.perf_counter()
    jobs = broker.reserve(["bench"], BATCH, "bench-calls", 60.0)
    t2 = time.perf_counter()
    if record:
        run.finish_s.append(t1 - t0)
        run.reserve_s.append(t2 - t1)
        run.jobs += len(jobs)
    run.held += jobs


def _median_ms(values: list[float]) -> float | None:
    return statistics.median(values) * 1000 if values else None


def run_calls(args: argparse.Namespace) -> None:
    broker = args.broker or "postgres"
    options = args.options.split(",") if args.options else list(OPTIONS)
    if "plain" not in options:
        options.insert(0, "plain")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise SystemExit(f"--options: unknown {', '.join(unknown)}; one of {', '.join(OPTIONS)}")
    cycles = args.cycles or (60 if args.quick else 300)
    warm = 20
    n = (cycles + warm + 4) * BATCH
    run_id = uuid.uuid4().hex[:8]
    tree = chervil_tree()
    tree.pop("files")
    log(f"== calls {broker}: {cycles} cycles of finish + reserve {BATCH}, {n} jobs per "
        f"option, run {run_id}")
    with contextlib.ExitStack() as stack:
        runs = []
        for option in options:
            url = stack.enter_context(_broker_url(broker, f"{run_id}_{option}"))
            run = _fill(option, url, n)
            stack.callback(run.app.close)
            runs.append(run)
        for i in range(warm + cycles):
            # each option first in turn: the first call of a round follows the longest idle
            for run in runs[i % len(runs):] + runs[:i % len(runs)]:
                _cycle(run, record=i >= warm)
        rows = []
        plain = runs[0]
        for run in runs:
            r_ms, f_ms = _median_ms(run.reserve_s), _median_ms(run.finish_s)
            p_r, p_f = _median_ms(plain.reserve_s), _median_ms(plain.finish_s)
            rows.append({
                "option": run.option, "describe": DESCRIBE[run.option],
                "jobs_per_reserve": run.jobs / cycles if cycles else None,
                "reserve_ms": r_ms, "finish_ms": f_ms,
                "reserve_x_plain": r_ms / p_r if r_ms and p_r else None,
                "cycle_x_plain": ((r_ms + f_ms) / (p_r + p_f)
                                  if r_ms and f_ms and p_r and p_f else None)})
    summary = {"broker": broker, "rows": rows, "chervil": tree, "settings": {
        "cycles": cycles, "batch": BATCH, "held": KEEP, "jobs_per_option": n, "run": run_id,
        "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "when": datetime.datetime.now().isoformat(timespec="seconds")}}
    print(render(summary))
    if not args.no_write:
        write_results(summary, f"calls-{broker}", args.latest)


def render(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    c = summary["chervil"]
    lines = [f"\n### one reserve and one finish on {summary['broker']}: medians of "
             f"{s['cycles']} interleaved cycles, batches of {s['batch']}; chervil {c['head']}"
             + (f" + uncommitted {', '.join(c['changed'])}" if c["changed"] else ""), "",
             "| option | jobs/reserve | reserve ms | x plain | finish ms | "
             "reserve + finish, x plain |", "|---|---|---|---|---|---|"]

    def f(x: float | None, d: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{d}f}"

    for r in summary["rows"]:
        lines.append(f"| {r['describe']} | {f(r['jobs_per_reserve'], 1)} | "
                     f"{f(r['reserve_ms'])} | {f(r['reserve_x_plain'])} | "
                     f"{f(r['finish_ms'])} | {f(r['cycle_x_plain'])} |")
    return "\n".join(lines)
