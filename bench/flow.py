"""Flow mode: what each flow-control option costs chervil's drain rate.

``python -m bench flow --broker sqlite|redis|postgres [--quick] [--reps N]``:

one worker (``-p 2 -t 8``), N jobs waiting (20,000; 2,000 with --quick), time from the
worker's start until all are done, plus the steady rate (``measure.drain``), for the same
no-op task under each option of ``bench/peers/chervil_flow.py``: plain, unique, lock,
concurrency, rate. Reps are interleaved (plain, unique, lock, concurrency, rate, plain,
...); each option's median is divided by the plain median of the same run, and each
option's drain by the plain drain of its own rep (the median of those ratios: less
swayed by a machine that drifts between reps).

Every measurement gets a fresh broker: its own SQLite file, Redis prefix (in the bench
database, 14; nothing is flushed: the measurement's own keys are deleted afterwards) or
PostgreSQL schema (dropped afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis

from .configs import PG_URL, REDIS_URL, TMP, _bin, _env
from .measure import DONE, LAT, DriverError, Lib, Variant, drain, rclient, run_driver
from .report import _f, _median, _spread, redis_cmds_lines, write_results
from .report import log as _log
from .venvs import ROOT, project_python

OPTIONS = ("plain", "unique", "lock", "concurrency", "rate")
DESCRIBE = {
    "plain": "no option",
    "unique": 'unique="k:{i}" (every job its own key)',
    "lock": 'lock="acct:{k}", k = i % 1000',
    "concurrency": "concurrency=64",
    "rate": 'rate_limit="1000000/s" (never empties)',
}
KEEP = ("rate", "steady_rate", "first_job_s", "worker_cpu_us_per_job", "redis_cmds_per_job",
        "seconds", "done", "partial", "loadavg_1m_before")


def _clear_counters(_lib: Lib | None = None) -> None:
    rclient(REDIS_URL).delete(DONE, LAT)


def _variant() -> Variant:
    py = project_python()
    return Variant("chervil -p2 -t8", [
        _bin(py, "chervil"), "worker", "chervil_flow:app", "-Q", "bench", "-p", "2", "-t", "8",
        "--log-level", "WARNING"])


@contextlib.contextmanager
def fresh_lib(broker: str, option: str, tag: str) -> Iterator[Lib]:
    """A Lib on a broker nobody has used, removed again when the measurement ends."""
    py = project_python()
    name = f"flow-{broker}-{option}"
    if broker == "sqlite":
        path = TMP / "flow" / tag / "bench.db"

        def reset(lib: Lib) -> None:
            _clear_counters()
            shutil.rmtree(path.parent, ignore_errors=True)
            path.parent.mkdir(parents=True)

        lib = Lib(name, "chervil_flow", py,
                  _env(CHERVIL_BROKER_URL=f"sqlite:///{path}", BENCH_BROKER=str(path),
                       BENCH_FLOW=option), reset, bulk="enqueue_many")
        try:
            yield lib
        finally:
            from chervil.brokers.wake import wake_dir

            shutil.rmtree(wake_dir(str(path)), ignore_errors=True)
            shutil.rmtree(path.parent, ignore_errors=True)
    elif broker == "redis":
        base = os.environ.get("BENCH_CHERVIL_REDIS_URL", REDIS_URL)
        prefix = f"bench-flow-{tag}"
        sep = "&" if "?" in base else "?"
        lib = Lib(name, "chervil_flow", py,
                  _env(CHERVIL_BROKER_URL=f"{base}{sep}prefix={prefix}", BENCH_FLOW=option),
                  _clear_counters, bulk="enqueue_many")
        try:
            yield lib
        finally:
            _delete_prefix(base, prefix)
    else:
        schema = f"bench_flow_{tag}"

        def pg_reset(lib: Lib) -> None:
            _clear_counters()
            _drop_schema(schema)
            run_driver(lib, "setup", timeout=120)

        lib = Lib(name, "chervil_flow", py,
                  _env(CHERVIL_BROKER_URL=f"{PG_URL}?schema={schema}", BENCH_SCHEMA=schema,
                       BENCH_FLOW=option), pg_reset, bulk="enqueue_many")
        try:
            yield lib
        finally:
            _drop_schema(schema)


def _delete_prefix(url: str, prefix: str) -> None:
    r = redis.Redis.from_url(url.split("?", 1)[0])
    batch: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            r.unlink(*batch)
            batch.clear()
    if batch:
        r.unlink(*batch)


def _drop_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def chervil_tree() -> dict[str, Any]:
    """Which chervil ran: HEAD, the files changed from it, and a hash per source file
    (the install is editable, so a file saved mid-run changes what later workers run)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    files = {str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()[:12]
             for path in sorted((ROOT / "chervil").rglob("*"))
             if path.is_file() and path.suffix in (".py", ".sql", ".lua")}
    return {"head": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--porcelain", "--", "chervil").splitlines(),
            "files": files}


def summarize(broker: str, reps: list[dict[str, dict[str, Any]]],
              errors: dict[str, list[str]]) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for option in OPTIONS:
        runs = [rep[option] for rep in reps if option in rep]
        row: dict[str, Any] = {"option": option, "describe": DESCRIBE[option],
                               "errors": errors.get(option, []), "reps": runs}
        for k in KEEP:
            if k == "partial":
                row[k] = any(x.get("partial") for x in runs)
            else:
                row[k] = _median([x.get(k) for x in runs])
        row["rate_spread"] = _spread([x.get("rate") for x in runs])
        if runs and "redis_cmds" in runs[-1]:
            row["redis_cmds"] = runs[-1]["redis_cmds"]
        rows[option] = row
    plain = rows["plain"]
    for option, row in rows.items():
        for key, out in (("rate", "ratio"), ("steady_rate", "steady_ratio")):
            row[out] = (row[key] / plain[key]) if row[key] and plain[key] else None
        # the same ratio rep by rep (each against the plain drain of its own rep)
        per_rep = [rep[option]["rate"] / rep["plain"]["rate"] for rep in reps
                   if option in rep and "plain" in rep and rep["plain"].get("rate")]
        row["ratio_per_rep"] = per_rep
        row["ratio_median_of_reps"] = _median(per_rep)
    return {"broker": broker, "rows": list(rows.values())}


def render(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    broker = summary["broker"]
    lines = [f"\n### flow control on {broker}: chervil -p2 -t8, drain N={s['n']}, "
             f"medians of {s['reps']} interleaved rep(s), {s['cpus']} CPUs", ""]
    c = summary.get("chervil")
    if c:
        lines[-1:] = [f"chervil {c['head']}" + (f" + uncommitted {', '.join(c['changed'])}"
                                                 if c["changed"] else ""), ""]
    head = ["option", "drain/s", "x plain", "x plain, rep by rep", "steady/s",
            "x plain (steady)", "1st job s", "CPU µs/job", "spread", "load 1m"]
    if broker == "redis":
        head.append("cmds/job")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["rows"]:
        if not r["reps"]:
            lines.append(f"| {r['describe']} | failed |" + " |" * (len(head) - 2))
            continue
        cells = [r["describe"], _f(r["rate"]) + (" (partial)" if r["partial"] else ""),
                 _f(r["ratio"], 2), _f(r["ratio_median_of_reps"], 2), _f(r["steady_rate"]),
                 _f(r["steady_ratio"], 2),
                 _f(r["first_job_s"], 2), _f(r["worker_cpu_us_per_job"]),
                 "n/a" if r["rate_spread"] is None else f"{r['rate_spread']:.0%}",
                 _f(r["loadavg_1m_before"], 1)]
        if broker == "redis":
            cells.append(_f(r.get("redis_cmds_per_job"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    lines += redis_cmds_lines([(r["option"], r["redis_cmds"]) for r in summary["rows"]
                               if r.get("redis_cmds")], "(last rep)")
    errs = [(r["option"], e) for r in summary["rows"] for e in r["errors"]]
    if errs:
        lines += ["", "Errors:"] + [f"- {o}: {e[:300]}" for o, e in errs]
    return "\n".join(lines)


def run_flow(args: argparse.Namespace) -> None:
    broker = args.broker or "sqlite"
    n = args.n_drain or (2000 if args.quick else 20000)
    reps_n = args.reps if args.reps is not None else (1 if args.quick else 3)
    max_drain = 60.0 if args.quick else 180.0
    variant = _variant()
    r = rclient(REDIS_URL)
    run_id = uuid.uuid4().hex[:8]
    reps: list[dict[str, dict[str, Any]]] = []
    errors: dict[str, list[str]] = {}
    tree_before = chervil_tree()
    _log(f"== flow {broker}: N={n}, {reps_n} rep(s), run {run_id}; chervil "
         f"{tree_before['head']}, {len(tree_before['changed'])} file(s) changed from it")
    for rep in range(reps_n):
        got: dict[str, dict[str, Any]] = {}
        for option in OPTIONS:
            tag = f"{run_id}_{rep}_{option}"
            load = os.getloadavg()[0]
            try:
                with fresh_lib(broker, option, tag) as lib:
                    res = drain(lib, variant, r, n, max_drain,
                                count_commands=broker == "redis")
            except (DriverError, OSError, ValueError, psycopg.Error, redis.RedisError) as exc:
                errors.setdefault(option, []).append(f"rep {rep + 1}: {exc}")
                _log(f"  rep {rep + 1} {option} FAILED: {exc}")
                continue
            res["loadavg_1m_before"] = load
            got[option] = res
            _log(f"  rep {rep + 1}/{reps_n} {option}: {res['rate']:.0f}/s "
                 f"(steady {res['steady_rate'] or 0:.0f}/s)"
                 + (" PARTIAL" if res["partial"] else ""))
        reps.append(got)
    _clear_counters()
    tree_after = chervil_tree()
    summary = summarize(broker, reps, errors)
    summary["chervil"] = tree_before
    files_before, files_after = tree_before.pop("files"), tree_after.pop("files")
    moved = sorted(f for f in files_before.keys() | files_after.keys()
                   if files_before.get(f) != files_after.get(f))
    if moved:
        summary["chervil_after"] = dict(tree_after, changed_during_run=moved)
        summary["warning"] = ("chervil's source changed during the run (editable install: "
                              "later workers ran the new code): " + ", ".join(moved))
        _log(f"WARNING: {summary['warning']}")
    summary["settings"] = {
        "reps": reps_n, "quick": args.quick, "n": n, "max_drain_s": max_drain,
        "worker": " ".join(Path(variant.argv[0]).name.split() + variant.argv[1:]),
        "order": list(OPTIONS), "redis": REDIS_URL, "run": run_id, "cpus": os.cpu_count(),
        "when": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0]}
    print(render(summary))
    if "warning" in summary:
        print(f"\nWARNING: {summary['warning']}")
    if not args.no_write:
        write_results(summary, f"flow-{broker}", args.latest)
