"""URL options and the transport safety check: no server needed."""

from __future__ import annotations

import pytest

from chervil.brokers.postgres_setup import parse_url
from chervil.errors import ConfigurationError


def test_chervil_options_are_taken_out_of_the_libpq_url() -> None:
    opts = parse_url("postgresql://u@127.0.0.1:5432/db?schema=jobs&connect_timeout=3"
                     "&pool_max=4&allow_insecure=false")
    assert opts.schema == "jobs" and opts.pool_max == 4 and not opts.allow_insecure
    # the URL's connect_timeout stands; the other network defaults are added
    assert opts.conninfo == ("postgresql://u@127.0.0.1:5432/db?connect_timeout=3&keepalives=1"
                             "&keepalives_idle=10&keepalives_interval=5&keepalives_count=3"
                             "&tcp_user_timeout=30000")
    assert opts.channel == "chervil_jobs"


def test_defaults() -> None:
    opts = parse_url("postgres://localhost/db")
    assert (opts.schema, opts.pool_min, opts.pool_max) == ("chervil", 1, 8)
    assert opts.call_timeout == 30.0
    assert opts.conninfo == ("postgres://localhost/db?connect_timeout=10&keepalives=1"
                             "&keepalives_idle=10&keepalives_interval=5&keepalives_count=3"
                             "&tcp_user_timeout=30000")


def test_unknown_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match="shcema"):
        parse_url("postgresql://localhost/db?shcema=x")


@pytest.mark.parametrize("bad", ["schema=", "schema=pg_x", "schema=" + "x" * 56,
                                 "pool_max=zero", "pool_min=5&pool_max=2",
                                 "allow_insecure=maybe"])
def test_bad_values_are_refused(bad: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_url(f"postgresql://localhost/db?{bad}")


@pytest.mark.parametrize("mode", ["disable", "allow"])
def test_plaintext_to_a_remote_host_is_refused(mode: str) -> None:
    with pytest.raises(ConfigurationError, match=f"sslmode={mode}"):
        parse_url(f"postgresql://db.example.com/app?sslmode={mode}")
    with pytest.raises(ConfigurationError, match=r"10\.1\.2\.3"):
        parse_url(f"postgresql://10.1.2.3/app?sslmode={mode}")


def test_plaintext_is_allowed_when_asked_or_local() -> None:
    parse_url("postgresql://db.example.com/app?sslmode=disable&allow_insecure=true")
    parse_url("postgresql://127.0.0.1/app?sslmode=disable")
    parse_url("postgresql://[::1]/app?sslmode=disable")
    parse_url("postgresql://localhost/app?sslmode=disable")
    parse_url("postgresql:///app?host=/var/run/postgresql&sslmode=disable")
    parse_url("postgresql://db.example.com/app?sslmode=require")


def test_environment_sslmode_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSSLMODE", "disable")
    with pytest.raises(ConfigurationError, match="allow_insecure=true"):
        parse_url("postgresql://db.example.com/app")
