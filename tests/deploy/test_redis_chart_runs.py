"""The redis chart runs: its rendered start scripts and config, as three local pods on loopback with real
redis-server and sentinels. Pod 0 bootstraps as master, the gateway's transport finds it through Sentinel,
SIGKILL of pod 0 fails over, and pod 0 comes back as a replica of the new master."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

import pytest

from tests.deploy.redis_pods import RedisChartPods
from tests.deploy.render import gateway_container, render_chart

T = TypeVar("T")

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

PASSWORD = 'pw-with "quotes" and spaces'


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, pods: RedisChartPods) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{pods.tail()}")
        time.sleep(0.2)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[RedisChartPods]:
    docs = render_chart(
        "redis",
        set_values={
            "auth.password": PASSWORD,
            "sentinel.downAfterMilliseconds": 1000,
            "sentinel.failoverTimeout": 5000,
        },
    )
    p = RedisChartPods(docs, tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


_ROUNDTRIP = """
import asyncio, json, sys
from rtai_transport.client import close_redis, create_redis
from rtai_transport.settings import RedisSettings

async def main(cfg):
    settings = RedisSettings(sentinels=cfg["sentinels"], master=cfg["master"], password=cfg["password"],
                             sentinel_password=cfg["password"], retries=10)
    client = create_redis(settings)
    try:
        await client.set(cfg["key"], cfg["value"])
        got = await client.get(cfg["key"])
        print(got.decode() if isinstance(got, bytes) else got)
    finally:
        await close_redis(client)

asyncio.run(main(json.loads(sys.argv[1])))
"""


def gateway_roundtrip(sentinels: list[str], master: str, password: str, key: str, value: str) -> str:
    """SET then GET through rtai_transport's Sentinel client, in a separate process like a gateway would."""
    cfg = {"sentinels": sentinels, "master": master, "password": password, "key": key, "value": value}
    proc = subprocess.run(
        [sys.executable, "-c", _ROUNDTRIP, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def replicating(pods: RedisChartPods, index: int, master_index: int) -> bool:
    role = pods.role(index)
    return role[:3] == ["slave", "127.0.0.1", str(pods.redis_ports[master_index])] and role[3:4] == ["connected"]


def sentinel_sees_all(pods: RedisChartPods, index: int) -> bool:
    info = pods.sentinel_master_info(index)
    return info.get("num-other-sentinels") == "2" and info.get("num-slaves") == "2"


def sees_master(pods: RedisChartPods, index: int, master: str) -> bool:
    return pods.master_seen_by(index) == master


def gateway_sentinel_settings(pods: RedisChartPods) -> tuple[list[str], str]:
    """The gateway chart's Sentinel env (its default values), pod names mapped to loopback ports."""
    gw = gateway_container([])
    rendered = gw.env["RTAI_GW_REDIS__SENTINELS"].split(",")
    assert [s.split(".")[0] for s in rendered] == [f"{pods.name}-{i}" for i in range(pods.replicas)]
    assert gw.env_refs["RTAI_GW_REDIS__PASSWORD"]["secretKeyRef"]["name"] == pods.name
    mapped = [f"127.0.0.1:{pods.sentinel_ports[i]}" for i in range(pods.replicas)]
    return mapped, gw.env["RTAI_GW_REDIS__MASTER"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_redis_chart_bootstraps_fails_over_and_rejoins(pods: RedisChartPods) -> None:
    assert pods.replicas == 3
    assert pods.password == PASSWORD
    for i in range(pods.replicas):
        pods.start_pod(i)

    # pod 0 is master, the others replicate it, every sentinel agrees and knows the other two
    assert pods.role(0)[0] == "master"
    for i in (1, 2):
        wait_for(
            f"pod {i} replicating pod 0",
            partial(replicating, pods, i, 0),
            15,
            pods,
        )
    for i in range(3):
        assert pods.master_seen_by(i) == pods.addr(0)
        wait_for(
            f"sentinel {i} sees 2 sentinels and 2 replicas",
            partial(sentinel_sees_all, pods, i),
            20,
            pods,
        )

    # the gateway's transport, configured like the gateway chart configures it, finds the master via Sentinel
    sentinels, master_name = gateway_sentinel_settings(pods)
    assert gateway_roundtrip(sentinels, master_name, PASSWORD, "rtai:test:before", "1") == "1"

    # SIGKILL pod 0: the two remaining sentinels elect a new master among pods 1 and 2
    t0 = time.monotonic()
    pods.kill_pod(0)

    def elected() -> str | None:
        m = pods.master_seen_by(1)
        return m if m and m != pods.addr(0) and m == pods.master_seen_by(2) else None

    new_master = wait_for("failover", elected, 30, pods)
    failover_s = time.monotonic() - t0
    new_index = pods.redis_ports.index(int(new_master.rsplit(":", 1)[1]))
    wait_for("promoted replica is master", lambda: pods.role(new_index)[0] == "master", 10, pods)
    assert gateway_roundtrip(sentinels, master_name, PASSWORD, "rtai:test:after", "2") == "2"

    # pod 0 is recreated (fresh emptyDirs, same data volume): it asks the sentinels and rejoins as a replica
    pods.start_pod(0)
    # Sentinel converts a returning old master only once it sees it again (~10 s here), and the new master delays the
    # full sync for diskless replication (5 s): 15 s before any load, so 20 s was too tight on a busy machine.
    wait_for(
        "pod 0 replicating the new master",
        partial(replicating, pods, 0, new_index),
        40,
        pods,
    )
    for i in range(3):
        wait_for(f"sentinel {i} agrees on the new master", partial(sees_master, pods, i, new_master), 20, pods)
    assert pods.master_seen_by(0) == new_master
    print(f"failover took {failover_s:.1f} s")


@pytest.mark.parametrize(
    ("reply", "ready", "live"),
    [
        ("PONG", True, True),
        ("LOADING Redis is loading the dataset in memory", False, True),
        ("", False, False),  # no answer
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", False, False),
    ],
)
def test_probe_lets_a_loading_replica_live_but_not_serve(tmp_path: Path, reply: str, ready: bool, live: bool) -> None:
    """The chart's probe script with `redis-cli` stood in for by a function that prints a set reply: a replica loading a
    large resync answers LOADING for as long as that takes, and a liveness probe that failed it would restart the load
    in a loop."""
    probe = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "redis" / "files" / "probe.sh"
    quoted = json.dumps(reply)  # a double-quoted shell word (the replies hold no `$` or backquote)
    fake_cli = f"cli() {{ printf '%s' {quoted}; [ -n {quoted} ]; }}"  # fails, as redis-cli does, when nothing answers
    (tmp_path / "common.sh").write_text(f"MY_REDIS_PORT=6379\nMY_SENTINEL_PORT=26379\n{fake_cli}\n")
    env = {"SCRIPTS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    readiness = subprocess.run(["sh", str(probe), "redis"], env=env, timeout=10, check=False)
    liveness = subprocess.run(["sh", str(probe), "redis", "live"], env=env, timeout=10, check=False)
    assert (readiness.returncode == 0, liveness.returncode == 0) == (ready, live)
