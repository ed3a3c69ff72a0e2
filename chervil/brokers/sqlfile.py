"""Named SQL statements kept in ``.sql`` files under ``-- name: <name>`` headers."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_HEADER = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)


@cache
def load_queries(filename: str) -> dict[str, str]:
    """Parse ``brokers/sql/<filename>`` into {name: statement}."""
    text = resources.files("chervil.brokers").joinpath("sql", filename).read_text("utf-8")
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


def migrations(prefix: str) -> list[tuple[int, str]]:
    """Numbered migration files ``<prefix>_NNNN_*.sql`` in order: [(number, script)]."""
    folder = resources.files("chervil.brokers").joinpath("sql")
    found = []
    for entry in folder.iterdir():
        m = re.fullmatch(rf"{re.escape(prefix)}_(\d{{4}})_\w+\.sql", entry.name)
        if m:
            found.append((int(m.group(1)), entry.read_text("utf-8")))
    return sorted(found)
