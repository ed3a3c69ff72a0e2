"""What is compared on each broker: libraries, their worker commands, and how to reset."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

from .measure import Lib, Variant
from .venvs import ROOT, VenvError, ensure, project_python

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TMP = ROOT / ".bench" / "tmp"
BROKERS = ("sqlite", "redis", "postgres")


def _flush(_lib: Lib) -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


def _sqlite_reset(lib: Lib) -> None:
    _flush(lib)
    path = Path(lib.env["BENCH_BROKER"])
    shutil.rmtree(path.parent, ignore_errors=True)
    path.parent.mkdir(parents=True)
    if lib.module == "chervil_peer":
        from chervil.brokers.wake import wake_dir

        shutil.rmtree(wake_dir(str(path)), ignore_errors=True)


def _pg_reset(lib: Lib) -> None:
    _flush(lib)
    schema = lib.env["BENCH_SCHEMA"]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if lib.module != "chervil_peer":  # chervil creates its own schema
            conn.execute(f'CREATE SCHEMA "{schema}"')
    from .measure import run_driver

    run_driver(lib, "setup", timeout=120)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHERVIL_", "BENCH_"))}
    env.update(BENCH_REDIS=REDIS_URL, BENCH_PG_URL=PG_URL, PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def _bin(python: str, name: str) -> str:
    return str(Path(python).parent / name)


Builder = Callable[[], list[tuple[Lib, list[Variant]]]]


def _chervil(broker: str, url: str, reset: Callable[[Lib], None], **env: str
             ) -> tuple[Lib, list[Variant]]:
    py = project_python()
    lib = Lib(f"chervil-{broker}", "chervil_peer", py,
              _env(CHERVIL_BROKER_URL=url, **env), reset, bulk="enqueue_many")
    cmd = [_bin(py, "chervil"), "worker", "chervil_peer:app", "-Q", "bench", "-p", "2",
           "--log-level", "WARNING"]
    return lib, [Variant("chervil -p2 -t8", [*cmd, "-t", "8"]),
                 Variant("chervil -p2 -t32", [*cmd, "-t", "32"])]


def sqlite_libs(peers: set[str] | None) -> list[tuple[str, Builder]]:
    def path(name: str) -> str:
        return str(TMP / name / "bench.db")

    def chervil() -> list[tuple[Lib, list[Variant]]]:
        return [_chervil("sqlite", f"sqlite:///{path('chervil')}", _sqlite_reset,
                         BENCH_BROKER=path("chervil"))]

    def huey() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("huey")
        out = []
        for storage, label in (("sqlite", "huey SqliteHuey (fsync=False: synchronous=OFF)"),
                               ("sqlite-fsync", "huey SqliteHuey fsync=True (FULL)")):
            lib = Lib(f"huey-{storage}", "huey_peer", py,
                      _env(BENCH_STORAGE=storage, BENCH_BROKER=path(f"huey-{storage}")),
                      _sqlite_reset)
            argv = [_bin(py, "huey_consumer"), "huey_peer.huey", "-k", "process", "-w", "2",
                    "-q"]
            out.append((lib, [Variant(f"{label} -k process -w2", argv)]))
        return out

    def raw() -> list[tuple[Lib, list[Variant]]]:
        py = project_python()
        lib = Lib("raw-sqlite", "raw_sqlite", py, _env(BENCH_BROKER=path("raw")),
                  _sqlite_reset, bulk="executemany", latency=False)
        return [(lib, [Variant("raw floor (claim 100 + finish, 1 tx, FULL)",
                               [py, "-c", "import raw_sqlite; raw_sqlite.work()"])])]

    return _select([("chervil", chervil), ("huey", huey), ("raw", raw)], peers)


def redis_libs(peers: set[str] | None) -> list[tuple[str, Builder]]:
    def chervil() -> list[tuple[Lib, list[Variant]]]:
        url = os.environ.get("BENCH_CHERVIL_REDIS_URL", REDIS_URL)
        return [_chervil("redis", url, _flush)]

    def celery() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("celery")
        lib = Lib("celery", "celery_peer", py, _env(), _flush)
        return [(lib, [Variant("celery prefork -c2", [
            _bin(py, "celery"), "-A", "celery_peer", "-q", "worker", "-P", "prefork", "-c",
            "2", "-l", "WARNING"])])]

    def dramatiq() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("dramatiq")
        lib = Lib("dramatiq", "dramatiq_peer", py, _env(), _flush)
        return [(lib, [Variant("dramatiq -p2 -t8", [
            _bin(py, "dramatiq"), "dramatiq_peer", "--processes", "2", "--threads", "8"])])]

    def rq() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("rq")
        lib = Lib("rq", "rq_peer", py, _env(), _flush, bulk="enqueue_many")
        return [(lib, [Variant("rq SimpleWorker", [
            _bin(py, "rq"), "worker", "-u", REDIS_URL, "-w", "rq.worker.SimpleWorker", "-q",
            "bench"], drain_cap=4000)])]

    def huey() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("huey")
        lib = Lib("huey-redis", "huey_peer", py, _env(BENCH_STORAGE="redis"), _flush)
        return [(lib, [Variant("huey -k process -w2", [
            _bin(py, "huey_consumer"), "huey_peer.huey", "-k", "process", "-w", "2", "-q"])])]

    def taskiq() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("taskiq")
        lib = Lib("taskiq", "taskiq_peer", py, _env(), _flush)
        return [(lib, [Variant("taskiq stream, 2 workers", [
            _bin(py, "taskiq"), "worker", "taskiq_peer:broker", "--workers", "2",
            "--log-level", "WARNING"])])]

    def arq() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("arq")
        lib = Lib("arq", "arq_peer", py, _env(BENCH_ARQ_POLL="0.05"), _flush)
        return [(lib, [Variant("arq poll_delay=0.05", [
            py, "-c", "import arq_peer; arq_peer.work()"])])]

    def raw() -> list[tuple[Lib, list[Variant]]]:
        py = project_python()
        lib = Lib("raw-redis", "raw_redis", py, _env(), _flush, bulk="LPUSH x1000")
        return [(lib, [Variant("raw floor (LPUSH; BRPOP + RPOP 99, 2 processes)",
                               [py, "-c", "import raw_redis; raw_redis.work()"])])]

    return _select([("chervil", chervil), ("celery", celery), ("dramatiq", dramatiq),
                    ("rq", rq), ("huey", huey), ("taskiq", taskiq), ("arq", arq),
                    ("raw", raw)], peers)


def postgres_libs(peers: set[str] | None) -> list[tuple[str, Builder]]:
    def chervil() -> list[tuple[Lib, list[Variant]]]:
        return [_chervil("postgres", f"{PG_URL}?schema=bench_chervil", _pg_reset,
                         BENCH_SCHEMA="bench_chervil")]

    def procrastinate() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("procrastinate")
        lib = Lib("procrastinate", "procrastinate_peer", py,
                  _env(BENCH_SCHEMA="bench_procrastinate"), _pg_reset, bulk="batch_defer")
        return [(lib, [Variant("procrastinate -c 10", [
            _bin(py, "procrastinate"), "--app=procrastinate_peer.app", "worker", "-q",
            "bench", "-c", "10"])])]

    def pgqueuer() -> list[tuple[Lib, list[Variant]]]:
        py = ensure("pgqueuer")
        lib = Lib("pgqueuer", "pgqueuer_peer", py, _env(BENCH_SCHEMA="bench_pgqueuer"),
                  _pg_reset, bulk="enqueue(list)")
        # pgq 1.6's CLI crashes in its logging setup (AttributeError: 'str' object has no
        # attribute 'name'), so the driver calls PgQueuer.run() itself.
        return [(lib, [Variant("pgqueuer run() defaults", [
            py, "-c", "import pgqueuer_peer; pgqueuer_peer.work()"])])]

    def raw() -> list[tuple[Lib, list[Variant]]]:
        py = project_python()
        lib = Lib("raw-pg", "raw_pg", py, _env(BENCH_SCHEMA="bench_raw"), _pg_reset,
                  bulk="unnest", latency=False)
        return [(lib, [Variant("raw SKIP LOCKED (claim 100, finish in 1 stmt)",
                               [py, "-c", "import raw_pg; raw_pg.work()"])])]

    return _select([("chervil", chervil), ("procrastinate", procrastinate),
                    ("pgqueuer", pgqueuer), ("raw", raw)], peers)


def _select(items: list[tuple[str, Builder]], peers: set[str] | None
            ) -> list[tuple[str, Builder]]:
    return [(k, b) for k, b in items if k == "chervil" or peers is None or k in peers]


LIBS = {"sqlite": sqlite_libs, "redis": redis_libs, "postgres": postgres_libs}
__all__ = ["BROKERS", "LIBS", "PG_URL", "REDIS_URL", "VenvError"]
