"""A producer process: enqueue probe jobs and log every outcome, one line each.

    T <id> <key>          about to enqueue (written before the call)
    O <id>                enqueue returned: committed
    E <id> <error type>   enqueue raised

Usage: python producer.py LOG SEED COUNT RATE NAME [BATCH]
The job mix (duration 1 ms .. 1 s log-uniform, 5% failing once) follows from SEED.
"""

from __future__ import annotations

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import probeapp


def plan(rng: random.Random) -> tuple[float, int]:
    ms = round(10 ** rng.uniform(0, 3), 2)
    fail = 1 if rng.random() < 0.05 else 0
    return ms, fail


def main() -> None:
    log_path, seed, count, rate, name = sys.argv[1:6]
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    rng = random.Random(f"{seed}:{name}")
    app = probeapp.app
    probe = app.tasks["probe"]
    pause = 1.0 / float(rate)
    with open(log_path, "a", buffering=1) as out:
        produce(app, probe, out, rng, int(count), batch, pause, name)


def produce(app, probe, out, rng, count, batch, pause, name):  # type: ignore[no-untyped-def]
    n = 0
    while n < count:
        calls = []
        for _ in range(batch):
            ms, fail = plan(rng)
            calls.append(probe.prepare(f"{name}-{n}", ms, fail))
            n += 1
        out.write("".join(f"T {c.new_job.id} {name}-{i}\n"
                          for i, c in enumerate(calls, n - len(calls))))
        try:
            handles = app.enqueue_many(calls)
        except Exception as exc:
            out.write("".join(f"E {c.new_job.id} {type(exc).__name__}\n" for c in calls))
        else:
            out.write("".join(f"O {h.id}\n" for h in handles))
        time.sleep(pause * batch)


if __name__ == "__main__":
    main()
