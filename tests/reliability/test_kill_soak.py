"""T-01: random SIGKILLs of worker children and whole workers under load.

Pass: zero lost, unexpected, unexplained duplicates, duplicate effects and overlaps;
every job terminal within lease + sweep time (plus the backlog) after the last kill.
Reproduce a run with ``CHERVIL_SOAK_SEED=<seed>``; ``scripts/soak`` runs it longer.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import Backend
from .harness import new_seed
from .soak import run_soak

pytestmark = pytest.mark.slow

# CI tier (the whole reliability run stays near 5 minutes); scripts/soak runs longer
SECONDS = {"sqlite": 35.0, "redis": 30.0, "postgres": 30.0}


@pytest.mark.timeout(300)
def test_kill_soak(backend: Backend, tmp_path: Path) -> None:
    seed = new_seed()
    seconds = float(os.environ.get("CHERVIL_SOAK_SECONDS", SECONDS[backend.kind]))
    result = run_soak(tmp_path, backend.url, seed, seconds)
    print(result.table())
    where = f"seed {seed}; ledger and logs kept in {tmp_path}"
    assert result.report.violations() == {}, where
    assert result.report.enqueued_ok >= 500, where
    assert result.kills >= 5, where
    assert result.supervisors_alive, where
    assert result.drain_after_last_kill <= result.bound, where
