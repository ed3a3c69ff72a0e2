"""The docs' runnable examples run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent


@pytest.mark.parametrize("example, first_line", [
    ("quickstart.py", "succeeded charged 1999 for order 1042"),
    ("flow_control.py", "duplicate: True True"),
    ("schedules.py", "schedules.morning_digest: next fire"),
    ("transactional.py", "committed order's job: queued"),
])
def test_example_runs(example: str, first_line: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / example)],
                         capture_output=True, text=True, timeout=60, check=True,
                         cwd=str(ROOT / "examples"))
    assert out.stdout.startswith(first_line), out.stdout
