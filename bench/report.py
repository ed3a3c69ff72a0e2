"""Medians over reps, the ratios chervil / best peer, and the printed tables."""

from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from typing import Any

from .venvs import ROOT

RESULTS = ROOT / "bench" / "results"
DRAIN_KEYS = ("rate", "steady_rate", "first_job_s", "worker_cpu_us_per_job",
              "redis_cmds_per_job", "seconds", "done", "processes")
LAT_KEYS = ("p50_ms", "p99_ms", "idle_cpu_pct")


def _median(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_results(summary: dict[str, Any], name: str, latest: bool) -> None:
    """bench/results/<date>-<name>.json, and latest-<name>.json when asked."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS / f"{datetime.date.today().isoformat()}-{name}.json"]
    if latest:
        paths.append(RESULTS / f"latest-{name}.json")
    for path in paths:
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        log(f"wrote {path}")


def redis_cmds_lines(cmds: list[tuple[str, dict[str, float]]], what: str) -> list[str]:
    """The Markdown lines listing Redis commands per job of each row (none: no lines)."""
    if not cmds:
        return []
    return (["", f"Redis commands per job {what} (INFO commandstats delta / N, minus the "
             "task's INCR and the harness's GET polls; server-wide):"]
            + [f"- {c}: " + ", ".join(f"{k} {v:g}" for k, v in d.items()) for c, d in cmds])


def _spread(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 2 or not statistics.median(vals):
        return None
    return (max(vals) - min(vals)) / statistics.median(vals)


def summarize(broker: str, data: dict[str, dict[str, Any]], failed: dict[str, str]
              ) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for lib, d in data.items():
        for label, vd in d["variants"].items():
            row: dict[str, Any] = {
                "lib": lib, "config": label, "bulk_api": d["bulk_api"],
                "enqueue": _median(d["enqueue"]), "bulk": _median(d["bulk"]),
                "enqueue_spread": _spread(d["enqueue"]), "errors": d["errors"] + vd["errors"],
                "reps": {"enqueue": d["enqueue"], "bulk": d["bulk"], "drain": vd["drain"],
                         "latency": vd["latency"]},
            }
            for k in DRAIN_KEYS:
                row[k] = _median([x.get(k) for x in vd["drain"]])
            row["drain_spread"] = _spread([x.get("rate") for x in vd["drain"]])
            row["partial"] = any(x.get("partial") for x in vd["drain"])
            if vd["drain"] and "redis_cmds" in vd["drain"][-1]:
                row["redis_cmds"] = vd["drain"][-1]["redis_cmds"]
            for k in LAT_KEYS:
                row[k] = _median([x.get(k) for x in vd["latency"]])
            rows.append(row)
    for name, reason in failed.items():
        rows.append({"lib": name, "config": name, "failed": reason})
    return {"broker": broker, "rows": rows, "ratios": ratios(rows)}


def _best(rows: list[dict[str, Any]], key: str, low: bool = False
          ) -> tuple[float | None, str | None]:
    vals = [(r[key], r["config"]) for r in rows if r.get(key) is not None]
    if not vals:
        return None, None
    v, who = (min if low else max)(vals)
    return v, who


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    live = [r for r in rows if "failed" not in r]
    mine = [r for r in live if r["lib"].startswith("chervil")]
    peers = [r for r in live if not r["lib"].startswith(("chervil", "raw"))]
    raw = [r for r in live if r["lib"].startswith("raw")]
    out: dict[str, Any] = {}
    if not mine:
        return {"note": "chervil not available on this broker"}

    def ratio(key: str, others: list[dict[str, Any]], low: bool = False,
              only: str | None = None) -> dict[str, Any] | None:
        pool = [r for r in others if only is None or r["lib"] == only]
        theirs, who = _best(pool, key, low)
        ours, which = _best(mine, key, low)
        if theirs is None or ours is None or not theirs:
            return None
        return {"chervil": ours, "chervil_config": which, "peer": theirs, "peer_config": who,
                "ratio": ours / theirs}

    out["drain / best peer"] = ratio("rate", peers)
    out["steady drain / best peer"] = ratio("steady_rate", peers)
    out["drain / raw floor"] = ratio("rate", raw)
    out["single enqueue / best peer"] = ratio("enqueue", peers)
    out["single enqueue / raw floor"] = ratio("enqueue", raw)
    out["bulk / best peer bulk"] = ratio("bulk", peers)
    out["bulk / rq enqueue_many"] = ratio("bulk", peers, only="rq")
    out["bulk / raw floor"] = ratio("bulk", raw)
    # SqliteHuey defaults to synchronous=OFF; fsync=True is chervil's durability (FULL)
    same = [r for r in peers if r["lib"].endswith("-fsync")]
    out["drain / same-durability peer"] = ratio("rate", same)
    out["single enqueue / same-durability peer"] = ratio("enqueue", same)
    out["latency p50 / best peer (lower is better)"] = ratio("p50_ms", peers, low=True)
    out["latency p99 / best peer (lower is better)"] = ratio("p99_ms", peers, low=True)
    out["latency p50 / raw floor (lower is better)"] = ratio("p50_ms", raw, low=True)
    out["latency p99 / raw floor (lower is better)"] = ratio("p99_ms", raw, low=True)
    out["idle CPU / best peer (lower is better)"] = ratio("idle_cpu_pct", peers, low=True)
    out["CPU per job / best peer (lower is better)"] = ratio("worker_cpu_us_per_job", peers,
                                                             low=True)
    return {k: v for k, v in out.items() if v is not None}


def _f(v: Any, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def render(summary: dict[str, Any]) -> str:
    broker = summary["broker"]
    s = summary.get("settings", {})
    lines = [f"\n### {broker} (medians of {s.get('reps')} rep(s); drain N={s.get('n_drain')}, "
             f"enqueue N={s.get('n_enqueue')}, bulk N={s.get('n_bulk')})", ""]
    head = ["config", "enqueue/s", "bulk/s", "drain/s", "steady/s", "1st job s",
            "CPU µs/job", "p50 ms", "p99 ms", "idle CPU %"]
    if broker == "redis":
        head.append("cmds/job")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in summary["rows"]:
        if "failed" in r:
            lines.append(f"| {r['config']} | {r['failed'][:150]} |" + " |" * (len(head) - 2))
            continue
        bulk = _f(r["bulk"]) + (f" ({r['bulk_api']})" if r["bulk"] else "")
        drain = _f(r["rate"]) + (" (partial)" if r["partial"] else "")
        cells = [r["config"], _f(r["enqueue"]), bulk, drain, _f(r["steady_rate"]),
                 _f(r["first_job_s"], 2), _f(r["worker_cpu_us_per_job"]), _f(r["p50_ms"], 2),
                 _f(r["p99_ms"], 2), _f(r["idle_cpu_pct"], 2)]
        if broker == "redis":
            cells.append(_f(r.get("redis_cmds_per_job"), 1))
        lines.append("| " + " | ".join(cells) + " |")
    lines += redis_cmds_lines([(r["config"], r["redis_cmds"]) for r in summary["rows"]
                               if r.get("redis_cmds")], "on the drain path")
    errs = [(r["config"], e) for r in summary["rows"] for e in r.get("errors", [])]
    if errs:
        lines += ["", "Errors:"] + [f"- {c}: {e[:300]}" for c, e in errs]
    for when, p in zip(("before", "after"), s.get("ping_us", []), strict=False):
        busy, idle, gap = p["busy"], p["idle"], p["gap_ms"]
        lines.append(f"- Redis PING from the harness, {when} the reps: p50/p99 {busy[0]:.0f}/"
                     f"{busy[1]:.0f} µs back to back, {idle[0]:.0f}/{idle[1]:.0f} µs after "
                     f"{gap:g} ms idle (the latency runs send a job every {gap:g} ms)")
    lines += ["", "Ratios (chervil's best config / best peer config):"]
    for name, v in summary["ratios"].items():
        if isinstance(v, str):
            lines.append(f"- {name}: {v}")
            continue
        lines.append(f"- {name}: {v['ratio']:.2f}x  ({v['chervil_config']} {_f(v['chervil'], 2)}"
                     f" vs {v['peer_config']} {_f(v['peer'], 2)})")
    return "\n".join(lines)
