"""Named crash points, for the tests that prove the delivery promises.

``CHERVIL_CRASH_AT=<point>[:<n>]`` makes the process exit hard (``os._exit``, no cleanup,
no flush: as a SIGKILL would) the n-th time (default: the first) it reaches ``<point>``.
Unset, a crash point costs one dictionary lookup. The points:

    claimed          a worker child holds freshly reserved jobs, before any runs
    task_started     a job is about to run
    before_finish    outcomes are computed, before they are committed
    finish_retry     ... and one of them is a retry
    finish_dead      ... and one of them moves a job to the dead-letter queue
    scheduler_tick   a scheduler computed a tick's fires, before enqueueing them
    after_commit     a producer's enqueue committed, before it returns to the caller
    relay_enqueued   the outbox relay enqueued a batch, before deleting it from the outbox
"""

from __future__ import annotations

import os
import threading

POINTS = frozenset({"claimed", "task_started", "before_finish", "finish_retry", "finish_dead",
                    "scheduler_tick", "after_commit", "relay_enqueued"})
EXIT_CODE = 86

_spec = os.environ.get("CHERVIL_CRASH_AT", "")
_target, _, _nth = _spec.partition(":")
_remaining = int(_nth) if _nth.isdigit() else 1
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Exit at once if ``CHERVIL_CRASH_AT`` names this point (and its count is reached)."""
    global _remaining
    if name != _target:
        return
    with _lock:
        _remaining -= 1
        if _remaining <= 0:
            os._exit(EXIT_CODE)
