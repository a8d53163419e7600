"""Readiness proves the data path: it fails once Redis has been down longer than a failover takes, and recovers by
itself when Redis is back."""

from __future__ import annotations

import time

import httpx
import pytest
import redis as redis_sync
from pydantic import ValidationError

from rtai_gateway.settings import GatewaySettings
from tests.support import procs
from tests.support.ports import free_port
from tests.support.procs import start
from tests.support.redis_server import RedisHandle, RedisProcess


def wait_status(url: str, status: int, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(url, timeout=2).status_code == status:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status} within {timeout}s")


def test_readyz_follows_redis(prefix: str, services: list[procs.Service]) -> None:
    redis = RedisProcess(port=free_port()).start()
    try:
        env = procs.redis_env_for_url(redis.url)
        w = procs.worker(env, prefix).start()
        services.append(w)
        g = procs.gateway(env, prefix, UNREADY_AFTER_REDIS_DOWN_S="2").start()
        services.append(g)
        patient = procs.gateway(env, prefix).start()  # the default: 30 s without Redis before it leaves rotation
        services.append(patient)
        assert httpx.get(f"{g.base}/readyz").status_code == 200
        redis.kill()
        down_for = wait_status(f"{g.base}/readyz", 503, 10)
        # The 2 s count from the last good refresh, up to one refresh interval (0.25 s) before the kill.
        assert down_for >= 1.5, f"out of rotation {down_for:.1f} s into the outage, before its 2 s"
        assert "redis unreachable for" in httpx.get(f"{g.base}/readyz").text
        wait_status(f"{w.base}/readyz", 503, 10)
        # An outage as long as a failover: still in rotation, refusing work as `unavailable` (the delivery tests).
        assert httpx.get(f"{patient.base}/readyz").status_code == 200, "a short outage took the gateway out"
        assert httpx.get(f"{g.base}/healthz").status_code == 200, "liveness must not depend on Redis"
        redis.start()
        wait_status(f"{g.base}/readyz", 200, 15)
        wait_status(f"{patient.base}/readyz", 200, 15)
        wait_status(f"{w.base}/readyz", 200, 15)
        # The worker re-registers its task on the restarted (empty) Redis.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if [t["task"] for t in httpx.get(f"{g.base}/v1/tasks").json()["tasks"]] == ["sentiment"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("task not listed again after Redis came back")
    finally:
        redis.kill()


def test_a_zero_grace_is_refused() -> None:
    """0 would read as "unready at once" but a healthy Redis is 0 s down too: every gateway would be unready."""
    with pytest.raises(ValidationError, match="unready_after_redis_down_s"):
        GatewaySettings(unready_after_redis_down_s=0)


def test_a_gateway_whose_reply_reader_keeps_failing_leaves_rotation(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """Redis answers the gateway's other calls, but every read of its reply stream fails (here the key holds a
    string; in production an access-list change can do it): no result would reach a client, so readiness fails,
    and comes back once the reader reads again."""
    env = procs.redis_env_for_url(redis_server.url)
    g = start(services, procs.gateway(env, prefix, UNREADY_AFTER_REDIS_DOWN_S="2", SESSIONS__REPLY_BLOCK_MS="200"))
    assert httpx.get(f"{g.base}/readyz").status_code == 200
    stream = f"{prefix}:v1:replies:{httpx.get(f'{g.base}/readyz').json()['gateway']}"
    admin = redis_sync.Redis.from_url(redis_server.url)
    admin.delete(stream)
    admin.set(stream, b"not a stream")  # every XREAD now answers WRONGTYPE
    wait_status(f"{g.base}/readyz", 503, 10)
    problems = httpx.get(f"{g.base}/readyz").json()["problems"]
    assert [p for p in problems if p.startswith("reply reader has not read its stream")], problems
    assert not [p for p in problems if p.startswith("redis")], problems  # the rest of Redis still answers
    admin.delete(stream)
    wait_status(f"{g.base}/readyz", 200, 10)
