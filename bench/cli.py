"""``python -m bench [--quick] [--reps N] [--only BROKER] [--peers a,b]``, ``... scale``,
``... flow --broker B``, ``... calls --broker B`` and ``... backlog [--broker B]``."""

from __future__ import annotations

import argparse
import datetime
import sys
from typing import Any

from .configs import BROKERS, LIBS, REDIS_URL, VenvError
from .measure import (
    DriverError,
    Lib,
    Variant,
    drain,
    latency,
    pings,
    rate,
    rclient,
    run_driver,
)
from .report import log as _log
from .report import render, summarize, write_results
from .venvs import ROOT


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("mode", nargs="?", default="run",
                   choices=["run", "scale", "flow", "calls", "backlog"])
    p.add_argument("--quick", action="store_true", help="small N, 1 rep: a smoke run")
    p.add_argument("--reps", type=int, help="interleaved repetitions (median; default 3, "
                   "quick 1)")
    p.add_argument("--only", choices=BROKERS, action="append",
                   help="broker table(s) to run (repeatable); default all")
    p.add_argument("--broker", choices=BROKERS,
                   help="scale, flow, calls and backlog modes: the broker")
    p.add_argument("--cycles", type=int, help="calls mode: cycles per option (default 300)")
    p.add_argument("--options", help="calls mode: comma-separated options (default all)")
    p.add_argument("--peers", help="comma-separated peers besides chervil "
                   "(huey,celery,dramatiq,rq,taskiq,arq,procrastinate,pgqueuer,raw)")
    p.add_argument("--n-drain", type=int, help="jobs per drain (default 20000, quick 2000)")
    p.add_argument("--n-enqueue", type=int, help="single enqueues (default 10000, quick 1000)")
    p.add_argument("--no-write", action="store_true", help="print only, write no JSON")
    p.add_argument("--latest", action="store_true",
                   help="also write bench/results/latest-<broker>.json "
                   "(flow: latest-flow-<broker>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.mode == "scale":
        from .scale import run_scale

        run_scale(args)
        return
    if args.mode == "backlog":
        from .backlog import run_backlog

        run_backlog(args)
        return
    if args.mode == "calls":
        from .calls import run_calls

        run_calls(args)
        return
    if args.mode == "flow":
        from .flow import run_flow

        run_flow(args)
        return
    if args.reps is None:
        args.reps = 3
    if args.quick:
        args.reps = 1 if args.reps == 3 else args.reps
    peers = set(args.peers.split(",")) if args.peers else None
    for broker in args.only or BROKERS:
        run_broker(broker, args, peers)


def _try(errors: list[str], what: str, fn: Any, *a: Any, **kw: Any) -> Any:
    try:
        return fn(*a, **kw)
    except (DriverError, OSError, ValueError) as exc:
        errors.append(f"{what}: {exc}")
        _log(f"  {what} FAILED: {exc}")
        return None


def run_broker(broker: str, args: argparse.Namespace, peers: set[str] | None) -> None:
    quick = args.quick
    n_drain = args.n_drain or (2000 if quick else 20000)
    n_enq = args.n_enqueue or (1000 if quick else 10000)
    n_bulk = 5000 if quick else 20000
    max_enq = 10.0 if quick else 30.0
    max_drain = 30.0 if quick else 90.0
    r = rclient(REDIS_URL)
    libs: list[tuple[Lib, list[Variant]]] = []
    failed: dict[str, str] = {}
    _log(f"== {broker}: preparing")
    for key, build in LIBS[broker](peers):
        try:
            libs.extend(build())
        except VenvError as exc:
            failed[key] = f"install failed: {exc}"
            _log(f"  {key}: {failed[key]}")
    # chervil on a broker someone else is writing: try it before counting on it
    for lib, _ in libs:
        if lib.module == "chervil_peer" and broker != "sqlite":
            try:
                lib.reset(lib)
                run_driver(lib, "setup", timeout=60)
            except (DriverError, OSError) as exc:
                failed[lib.name] = f"not available: {exc}"
                _log(f"  {lib.name}: {failed[lib.name]}")
    libs = [(lib, vs) for lib, vs in libs if lib.name not in failed]

    ping_us = [pings(r)]  # before and after: the machine can change within a run
    data: dict[str, dict[str, Any]] = {}
    for lib, variants in libs:
        data[lib.name] = {"lib": lib.name, "bulk_api": lib.bulk, "enqueue": [], "bulk": [],
                          "errors": [], "variants": {v.label: {"drain": [], "latency": []}
                                                     for v in variants}}
    for rep in range(args.reps):
        for lib, variants in libs:
            d = data[lib.name]
            _log(f"rep {rep + 1}/{args.reps} {lib.name}")
            lib.reset(lib)
            res = _try(d["errors"], "enqueue", run_driver, lib, "enqueue", n_enq, max_enq)
            if res:
                d["enqueue"].append(rate(res))
            if lib.bulk:
                lib.reset(lib)
                res = _try(d["errors"], "bulk", run_driver, lib, "bulk", n_bulk, max_enq)
                if res:
                    d["bulk"].append(rate(res))
            for v in variants:
                vd = d["variants"][v.label]
                res = _try(vd.setdefault("errors", []), "drain", drain, lib, v, r, n_drain,
                           max_drain, count_commands=broker == "redis")
                if res:
                    vd["drain"].append(res)
                    _log(f"  {v.label}: drain {res['rate']:.0f}/s")
                if lib.latency:
                    res = _try(vd["errors"], "latency", latency, lib, v, r)
                    if res:
                        vd["latency"].append(res)
    ping_us.append(pings(r))
    summary = summarize(broker, data, failed)
    summary["settings"] = {"reps": args.reps, "quick": quick, "n_drain": n_drain,
                           "n_enqueue": n_enq, "n_bulk": n_bulk, "redis": REDIS_URL,
                           "chervil_url": _portable(next(
                               (lib.env.get("CHERVIL_BROKER_URL") for lib, _ in libs
                                if lib.module == "chervil_peer"), None)),
                           "when": datetime.datetime.now().isoformat(timespec="seconds"),
                           "python": sys.version.split()[0], "ping_us": ping_us}
    print(render(summary))
    if not args.no_write:
        write_results(summary, broker, args.latest)


def _portable(url: str | None) -> str | None:
    """A broker URL as recorded in the results: a path under the project is written
    relative to it, so the JSON names no directory of the machine that ran it."""
    if url is None:
        return None
    return url.replace(str(ROOT) + "/", "")
