"""Setting up the PostgreSQL broker: URL options, the transport safety check, migrations.

URL: ``postgresql://user@host:5432/dbname?schema=chervil&sslmode=require``. chervil's own
options (below) are taken out before the rest goes to libpq; any option that is neither
chervil's nor libpq's is refused by name, so a typo never silently falls back to a default.

    schema          PostgreSQL schema holding chervil's tables (default ``chervil``)
    allow_insecure  ``true`` to allow an unencrypted (sslmode=disable/allow) connection
                    to a host that is not this machine
    pool_min        connections kept open (default 1)
    pool_max        connections at most (default 8), plus one per thread that waits
    pool_timeout    seconds to wait for a free connection or the server (default 30)

The schema is created and migrated on first connection, and by :func:`migrate` (the
``chervil migrate`` command): numbered ``sql/postgres_NNNN_*.sql`` files, each applied
once and recorded in ``<schema>.migrations``, all under a transaction-scoped advisory
lock so several processes starting at once migrate exactly once.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import psycopg
from psycopg import sql

from ..errors import ConfigurationError
from .sqlfile import migrations

CHERVIL_OPTIONS = ("schema", "allow_insecure", "pool_min", "pool_max", "pool_timeout",
                   "call_timeout")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_MAX_SCHEMA_BYTES = 55  # the wake-up channel "chervil_<schema>" must fit in 63 bytes


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    conninfo: str  # the URL with chervil's options taken out, for libpq
    schema: str = "chervil"
    allow_insecure: bool = False
    pool_min: int = 1
    pool_max: int = 8
    pool_timeout: float = 30.0
    call_timeout: float = 30.0  # a call without an answer this long is cut (BrokerUnavailable)

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel; the trigger in postgres_0001 builds the same name."""
        return f"chervil_{self.schema}"


_NETWORK_DEFAULTS = (("connect_timeout", "10"), ("keepalives", "1"),
                     ("keepalives_idle", "10"), ("keepalives_interval", "5"),
                     ("keepalives_count", "3"), ("tcp_user_timeout", "30000"))


def _libpq_keywords() -> set[str]:
    return {opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults()}


def parse_url(url: str) -> PostgresOptions:
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in pairs if k in CHERVIL_OPTIONS}
    theirs = [(k, v) for k, v in pairs if k not in CHERVIL_OPTIONS]
    unknown = sorted({k for k, _ in theirs} - _libpq_keywords())
    if unknown:
        raise ConfigurationError(
            f"unknown PostgreSQL URL option(s) {unknown}; chervil's are "
            f"{', '.join(CHERVIL_OPTIONS)}, the rest must be libpq connection parameters")
    # Detect a dead server or a silent network within seconds, unless the URL says otherwise.
    given = {k for k, _ in theirs}
    theirs += [(k, v) for k, v in _NETWORK_DEFAULTS if k not in given]
    query = urlencode(theirs)  # (urlunsplit would turn postgresql:///db into postgresql:/db)
    conninfo = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    schema = ours.get("schema", "chervil")
    if not schema or len(schema.encode()) > _MAX_SCHEMA_BYTES or schema.startswith("pg_"):
        raise ConfigurationError(
            f"PostgreSQL schema {schema!r} is not usable: give a name of 1 to "
            f"{_MAX_SCHEMA_BYTES} bytes that does not start with 'pg_'")
    flag = ours.get("allow_insecure", "false").lower()
    if flag not in _TRUE + _FALSE:
        raise ConfigurationError(f"allow_insecure={flag!r}: write allow_insecure=true or false")
    try:
        opts = PostgresOptions(
            conninfo=conninfo, schema=schema, allow_insecure=flag in _TRUE,
            pool_min=int(ours.get("pool_min", 1)), pool_max=int(ours.get("pool_max", 8)),
            pool_timeout=float(ours.get("pool_timeout", 30.0)),
            call_timeout=float(ours.get("call_timeout", 30.0)))
    except ValueError as exc:
        raise ConfigurationError(f"PostgreSQL URL option is not a number: {exc}") from None
    if not 0 <= opts.pool_min <= opts.pool_max or opts.pool_max < 1:
        raise ConfigurationError(
            f"pool_min={opts.pool_min}, pool_max={opts.pool_max}: need 0 <= min <= max, max >= 1")
    check_transport(opts)
    return opts


def _is_local(host: str) -> bool:
    if not host or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True  # Unix socket (default, directory or abstract) or the loopback name
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(opts: PostgresOptions) -> None:
    """Refuse plaintext to another machine unless ``allow_insecure=true`` says so."""
    if opts.allow_insecure:
        return
    try:
        params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(opts.conninfo)
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"PostgreSQL URL is not valid: {exc}") from None
    sslmode = str(params.get("sslmode") or os.environ.get("PGSSLMODE", "prefer")).lower()
    if sslmode not in ("disable", "allow"):
        return
    hosts = str(params.get("hostaddr") or params.get("host")
                or os.environ.get("PGHOSTADDR") or os.environ.get("PGHOST", ""))
    remote = [h for h in hosts.split(",") if not _is_local(h.strip())]
    if remote:
        raise ConfigurationError(
            f"sslmode={sslmode} sends jobs and credentials unencrypted to {', '.join(remote)}; "
            "use sslmode=require (or verify-full), or add allow_insecure=true to the broker "
            "URL if the network is private")


def migrate_connection(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Bring ``schema`` up to date on ``conn``; return the versions applied now."""
    ident = sql.Identifier(schema)
    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"chervil.migrate:{schema}",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.migrations (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())").format(ident))
        done = {row[0] for row in conn.execute(
            sql.SQL("SELECT version FROM {}.migrations").format(ident))}
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        for number, script in migrations("postgres"):
            if number in done:
                continue
            conn.execute(script.encode())
            conn.execute(sql.SQL("INSERT INTO {}.migrations (version) VALUES (%s)")
                         .format(ident), (number,))
            applied.append(number)
    return applied


def migrate(url: str) -> list[int]:
    """Create or upgrade chervil's schema at ``url``; return the versions applied now.

    Idempotent, and safe to run from several processes at once.
    """
    opts = parse_url(url)
    with psycopg.connect(opts.conninfo, autocommit=True) as conn:
        return migrate_connection(conn, opts.schema)
