"""chervil's benchmark harness: chervil beside its peers, on SQLite, Redis and PostgreSQL.

``python -m bench`` (or ``scripts/bench``) runs the tables; ``python -m bench scale``
the scale mode. Each peer library lives in its own virtualenv under ``.bench/venvs``
and is driven by a module in ``bench/peers`` run with that virtualenv's python, so no
peer is ever imported here.
"""
