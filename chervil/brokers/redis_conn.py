"""The Redis broker's connection side: URL options, clients, start-up safety checks.

See :mod:`chervil.brokers.redis` for the URL forms and options.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from ..errors import ConfigurationError

log = logging.getLogger("chervil.brokers.redis")

SOCKET_TIMEOUT = 5.0  # no command may hang longer than this (blocking waits excepted)
MAX_BLOCK = 30.0  # one blocking wait at most this long; its socket allows 10 s more
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_OPTIONS = ("prefix", "db", "cluster", "allow_eviction", "allow_no_password",
            "enqueue_timeout", "timeout", "succeeded_ttl", "dead_ttl", "ssl_ca_certs",
            "ssl_cert_reqs")


@dataclass(frozen=True, slots=True)
class RedisOptions:
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    unix_path: str | None = None
    tls: bool = False
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: str = "required"
    cluster: bool = False
    prefix: str = "chervil"
    allow_eviction: bool = False
    allow_no_password: bool = False
    enqueue_timeout: float = 10.0
    timeout: float = 10.0
    succeeded_ttl: int = 7 * 86400
    dead_ttl: int = 30 * 86400

    @property
    def where(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


def _bool(name: str, value: str) -> bool:
    if value.lower() not in _BOOL:
        raise ConfigurationError(f"Redis URL option {name}={value!r}: write true or false")
    return _BOOL[value.lower()]


def _number(name: str, value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise ConfigurationError(f"Redis URL option {name}={value!r} is not a number") from None
    if n < 0:
        raise ConfigurationError(f"Redis URL option {name}={value!r} must not be negative")
    return n


def parse_url(url: str) -> RedisOptions:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"not a Redis URL: {url!r}")
    opts = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise ConfigurationError(
            f"unknown Redis URL option(s) {', '.join(unknown)}; known: {', '.join(_OPTIONS)}")
    kw: dict[str, Any] = {}
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"Redis URL {url!r} names no socket: unix:///path/redis.sock")
        kw["unix_path"] = parts.path
        kw["db"] = int(opts.get("db", "0") or 0)
    else:
        if "db" in opts:
            raise ConfigurationError("Redis URL option db= is for unix:// URLs; write "
                                     "redis://host:port/<db>")
        kw["host"] = parts.hostname or "localhost"
        kw["port"] = parts.port or 6379
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigurationError(f"Redis URL {url!r}: the path must be a database number")
        kw["db"] = int(path or 0)
        kw["tls"] = scheme == "rediss"
    if parts.username:
        kw["username"] = unquote(parts.username)
    if parts.password is not None:
        kw["password"] = unquote(parts.password)
    prefix = opts.get("prefix", "chervil")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"Redis URL option prefix={prefix!r}: must be non-empty, "
                                 "without { or } (they are Redis Cluster hash tags)")
    kw["prefix"] = prefix
    for name in ("cluster", "allow_eviction", "allow_no_password"):
        if name in opts:
            kw[name] = _bool(name, opts[name])
    for name in ("enqueue_timeout", "timeout"):
        if name in opts:
            kw[name] = _number(name, opts[name])
    for name in ("succeeded_ttl", "dead_ttl"):
        if name in opts:
            kw[name] = int(_number(name, opts[name]))
    for name in ("ssl_ca_certs", "ssl_cert_reqs"):
        if name in opts:
            kw[name] = opts[name]
    options = RedisOptions(**kw)
    if options.cluster and (options.db or options.unix_path):
        raise ConfigurationError("Redis Cluster has only database 0 and no unix sockets")
    if (options.password is None and not options.allow_no_password
            and not _is_local(options)):
        raise ConfigurationError(
            f"Redis at {options.where} is not on this host and the URL has no password: "
            "anyone who can reach it can inject jobs. Put the password in the URL "
            "(redis://:password@host:6379/0) or add ?allow_no_password=true")
    return options


def _is_local(options: RedisOptions) -> bool:
    if options.unix_path or options.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(options.host).is_loopback
    except ValueError:
        return False


def make_client(options: RedisOptions, socket_timeout: float = SOCKET_TIMEOUT) -> Any:
    """A thread-safe client (connection pool). Retries are the broker's job, not redis-py's:
    a retried script could run twice, so the broker decides what is safe to repeat."""
    common: dict[str, Any] = {
        "username": options.username, "password": options.password,
        "socket_timeout": socket_timeout, "socket_connect_timeout": 2.0,
        "health_check_interval": 10, "client_name": "chervil",
    }
    if options.tls:
        common.update(ssl=True, ssl_cert_reqs=options.ssl_cert_reqs,
                      ssl_ca_certs=options.ssl_ca_certs)
    if options.cluster:
        return RedisCluster(host=options.host, port=options.port,
                            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2), **common)
    if options.unix_path:
        return redis.Redis(unix_socket_path=options.unix_path, db=options.db,
                           retry=Retry(NoBackoff(), 0), **common)
    return redis.Redis(host=options.host, port=options.port, db=options.db,
                       retry=Retry(NoBackoff(), 0), **common)


def nodes(client: Any) -> list[Any]:
    """One plain client per primary (cluster), or the client itself."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(n)
                for n in client.get_primaries()]  # type: ignore[no-untyped-call]
    return [client]


def check_server(client: Any, options: RedisOptions) -> None:
    """Refuse a Redis that may evict jobs; warn when it keeps nothing across a restart."""
    for node in nodes(client):
        try:
            conf = {_text(k): _text(v) for k, v in node.config_get("maxmemory-policy").items()}
            conf.update({_text(k): _text(v) for k, v in node.config_get("appendonly").items()})
            conf.update({_text(k): _text(v) for k, v in node.config_get("save").items()})
            persistence = True
        except redis.ResponseError:  # CONFIG disabled (managed Redis): INFO tells less
            info = node.info("memory")
            conf = {"maxmemory-policy": _text(info.get("maxmemory_policy", "noeviction"))}
            persistence = False
        policy = conf.get("maxmemory-policy", "noeviction")
        if policy != "noeviction" and not options.allow_eviction:
            raise ConfigurationError(
                f"Redis at {options.where} has maxmemory-policy {policy}: when memory runs "
                "out it deletes keys, i.e. jobs. Set maxmemory-policy noeviction (redis.conf "
                "or CONFIG SET), or add ?allow_eviction=true to the broker URL to accept it")
        if persistence and conf.get("appendonly") == "no" and not conf.get("save"):
            log.warning(
                "Redis at %s has persistence off (appendonly no, save \"\"): a Redis restart "
                "loses every job. Set appendonly yes (appendfsync everysec or always)",
                options.where)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
