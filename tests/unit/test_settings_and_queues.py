from __future__ import annotations

import random

import pytest

from chervil import ConfigurationError, Settings
from chervil.worker.queues import QueueSpec


def test_settings_precedence() -> None:
    env = {"CHERVIL_LEASE_SECONDS": "12", "CHERVIL_BROKER_URL": "sqlite:///env.db"}
    s = Settings.load(env, broker_url="sqlite:///arg.db")
    assert s.broker_url == "sqlite:///arg.db" and s.lease_seconds == 12.0
    assert Settings.load({}).broker_url == "sqlite:///chervil.db"


@pytest.mark.parametrize("env, message", [
    ({"CHERVIL_LEASE_SECONDS": "soon"}, "CHERVIL_LEASE_SECONDS='soon' is not a valid float"),
    ({"CHERVIL_PAYLOAD_LIMIT_BYTES": "-1"}, "payload_limit_bytes must be positive"),
    ({"CHERVIL_LEASE_SECONDS": "0.5"}, "too short"),
])
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.load(env)


def test_unknown_setting() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Settings.load({}, lease_secs=3)


def test_strict_queue_order() -> None:
    spec = QueueSpec.parse("critical, default,batch")
    assert spec.order() == ["critical", "default", "batch"]
    assert str(spec) == "critical,default,batch"


def test_weighted_queues_never_starve() -> None:
    spec = QueueSpec.parse("critical:10,batch:1")
    rng = random.Random(7)
    firsts = [spec.order(rng)[0] for _ in range(11_000)]
    share = firsts.count("batch") / len(firsts)
    assert 0.06 < share < 0.13  # about 1 in 11
    assert all(sorted(spec.order(rng)) == ["batch", "critical"] for _ in range(100))


@pytest.mark.parametrize("text", ["", "a,a", "a:0", "a:x", "a:2,b", ":3"])
def test_bad_queue_specs(text: str) -> None:
    with pytest.raises(ConfigurationError):
        QueueSpec.parse(text)
