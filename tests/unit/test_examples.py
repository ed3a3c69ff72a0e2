"""The docs' runnable examples run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def test_quickstart_runs() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.startswith("succeeded charged 1999 for order 1042")
