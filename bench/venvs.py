"""One virtualenv per peer under ``.bench/venvs/<peer>``, from ``bench/peers/<peer>.txt``.

Created once and reused: a stamp file holds the hash of the pin file it was built from.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / "bench" / "peers"
VENVS = ROOT / ".bench" / "venvs"
INSTALL_TIMEOUT = 600


class VenvError(Exception):
    pass


def project_python() -> str:
    return sys.executable


def ensure(peer: str) -> str:
    """The python of ``peer``'s venv, building it if its pin file changed."""
    pins = PEERS_DIR / f"{peer}.txt"
    want = hashlib.sha256(pins.read_bytes()).hexdigest()[:16]
    venv = VENVS / peer
    python = venv / "bin" / "python"
    stamp = venv / ".bench-stamp"
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return str(python)
    if venv.exists():
        shutil.rmtree(venv)
    VENVS.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
              "-r", str(pins)]]
    for argv in steps:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise VenvError(f"{peer}: install timed out after {INSTALL_TIMEOUT} s") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise VenvError(f"{peer}: {' '.join(argv[-2:])} failed: {' | '.join(tail)}")
    stamp.write_text(want + "\n")
    return str(python)


def main() -> None:
    """``python -m bench.venvs [peer ...]``: build the venvs now."""
    names = sys.argv[1:] or sorted(p.stem for p in PEERS_DIR.glob("*.txt"))
    for name in names:
        try:
            print(name, ensure(name))
        except VenvError as exc:
            print("FAILED", exc)


if __name__ == "__main__":
    main()
