"""Rules over the package's own source: the public names, and no code from data."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import chervil

PACKAGE = Path(chervil.__file__).parent
FORBIDDEN_MODULES = {"pickle", "marshal", "shelve", "dill", "cloudpickle", "_pickle"}


def test_all_lists_exactly_the_public_names() -> None:
    public = {n for n, v in vars(chervil).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)
              and n != "annotations"}
    assert set(chervil.__all__) - {"__version__"} == public
    for name in chervil.__all__:
        assert hasattr(chervil, name)


def test_no_pickle_marshal_eval_or_exec_anywhere() -> None:
    offences = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("eval", "exec", "__import__")):
                names = {node.func.id}
            else:
                continue
            bad = names & (FORBIDDEN_MODULES | {"eval", "exec", "__import__"})
            if bad:
                offences.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {sorted(bad)}")
    assert offences == []
