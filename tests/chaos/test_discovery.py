"""Sentinel discovery when nothing answers: a command must fail fast, so the gateway refuses work as `unavailable`
instead of holding every socket's reader while Redis is gone, and the same client must work once Redis is back.

redis-py gives each sentinel client 3 retries with backoff up to 10 s by default; with every sentinel down one
lookup took about 22 s on this machine, longer than the outage the chaos scenario makes. The bound below is far
from both: what the test tells apart is seconds against tens of seconds, not a latency target.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from rtai_transport import RedisSettings, close_redis, create_redis
from tests.support.sentinel import MASTER_NAME, SentinelTopology

FAILS_WITHIN_S = 6.0


@pytest.mark.timeout(90)
async def test_command_fails_fast_with_every_sentinel_down_and_works_after(topology: SentinelTopology) -> None:
    settings = RedisSettings(sentinels=topology.sentinel_addrs, master=MASTER_NAME, prefix="disc")
    client = create_redis(settings)  # the default retries (3) that services use
    try:
        await client.set("disc:k", "before")
        await asyncio.to_thread(topology.shutdown)
        for _ in range(3):  # the first command fails on its dead connection; the later ones go through discovery
            t0 = time.monotonic()
            with pytest.raises(RedisConnectionError):
                await client.get("disc:k")
            took = time.monotonic() - t0
            assert took < FAILS_WITHIN_S, f"a command took {took:.1f}s to fail with Redis down"
        await asyncio.to_thread(topology.restart)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert await client.get("disc:k") == b"before"  # appendonly: the key survived the restart
                break
            except RedisConnectionError:
                assert time.monotonic() < deadline, "the client never reached Redis after it came back"
                await asyncio.sleep(0.2)
    finally:
        await close_redis(client)


async def test_closing_a_client_closes_its_connections_to_the_sentinels(topology: SentinelTopology) -> None:
    name = "rtai-test:closing:sentinels"

    def ours() -> int:
        count = 0
        for address in topology.sentinel_addrs:
            admin = redis.Redis(port=int(address.rsplit(":", 1)[1]), socket_timeout=2)
            try:
                count += sum(1 for c in admin.client_list() if c.get("name") == name)
            finally:
                admin.close()
        return count

    client = create_redis(
        RedisSettings(sentinels=topology.sentinel_addrs, master=MASTER_NAME, prefix="disc"), name=name
    )
    await client.set("disc:k", "v")
    assert ours() >= 1  # discovery connected to a sentinel, under the client's name
    await close_redis(client)
    deadline = time.monotonic() + 5
    while ours() and time.monotonic() < deadline:  # the sentinels see the closes
        await asyncio.sleep(0.1)
    assert ours() == 0
