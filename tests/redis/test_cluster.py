"""The conformance suite on a local Redis Cluster of three masters.

Starts three redis-server processes in cluster mode on free loopback ports (files in a
temporary directory), joins them with ``redis-cli --cluster create``, runs every test
function of tests/contract/test_broker_contract.py, test_ack_and_fetch.py and
test_flow_control.py against a
broker opened with ``redis://127.0.0.1:<port>?cluster=true``, and stops the servers.
"""

from __future__ import annotations

import inspect
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from chervil.brokers import open_broker
from chervil.brokers.redis import RedisBroker
from chervil.clock import FakeClock
from tests.conftest import server_missing
from tests.contract import test_ack_and_fetch, test_broker_contract, test_flow_control
from tests.redis.server import RedisServer, free_port

CONTRACT = {name: fn for module in (test_broker_contract, test_ack_and_fetch, test_flow_control)
            for name, fn in inspect.getmembers(module, inspect.isfunction)
            if name.startswith("test_")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    cli = shutil.which("redis-cli")
    if cli is None:
        server_missing("redis-cli (binary)", FileNotFoundError("redis-cli"))
    root = tmp_path_factory.mktemp("cluster")
    servers: list[RedisServer] = []
    try:
        for i in range(3):
            port = free_port()
            servers.append(RedisServer(
                root / f"n{i}", "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                "--appendonly", "no", port=port).start())
        subprocess.run([cli or "redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{s.port}" for s in servers],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 20
        while not all(_cluster_ok(s.port) for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        yield servers[0].port
    finally:
        for s in servers:
            s.stop()


def _cluster_ok(port: int) -> bool:
    with redis.Redis(port=port) as r:
        info = r.execute_command("CLUSTER", "INFO").decode()
    return "cluster_state:ok" in info


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_on_cluster(cluster: int, name: str) -> None:
    clock = FakeClock(1_800_000_000.0)
    broker = open_broker(
        f"redis://127.0.0.1:{cluster}?cluster=true&prefix=c{uuid.uuid4().hex[:8]}", clock)
    assert isinstance(broker, RedisBroker)
    fn: Callable[..., Any] = CONTRACT[name]
    kwargs = {"broker": broker, "clock": clock}
    try:
        fn(**{p: kwargs[p] for p in inspect.signature(fn).parameters})
    finally:
        broker.close()


def test_queues_spread_over_the_masters(cluster: int) -> None:
    """The contract's queues really live on different nodes (else the test proves less)."""
    with redis.cluster.RedisCluster(host="127.0.0.1", port=cluster) as rc:
        nodes = {rc.get_node_from_key(f"p:{{{q}}}:ready").name
                 for q in ("default", "critical", "batch", "a", "b", "q", "other")}
    assert len(nodes) >= 2
