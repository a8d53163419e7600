"""A hello that fails in Redis leaves no session behind: a new session is forgotten, a resumed one is detached again
(so its grace and the reaper apply). Redis is real; it refuses the session's write with `CLIENT PAUSE ... WRITE`,
which lets the resume's read through and times out the claim's write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import websockets
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtai_gateway import lifecycle
from rtai_gateway.hub import Hub
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.settings import GatewaySettings
from rtai_protocol import Hello
from rtai_transport import Keys, close_redis, create_redis
from tests.support import procs
from tests.support.hub_harness import RecordingConn
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    settings = GatewaySettings(
        redis={"url": redis_server.url, "prefix": prefix, "socket_timeout_s": 0.3, "retries": 0},
        sessions={"detach_grace_s": 30},
    )
    client = create_redis(settings.redis)
    yield Hub(settings, client, Keys(prefix), GatewayMetrics())
    await close_redis(client)


@pytest.fixture
async def writes_paused(redis_server: RedisHandle) -> AsyncIterator[None]:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        yield
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


async def test_a_new_session_whose_claim_fails_is_forgotten(hub: Hub, writes_paused: None) -> None:
    conn: Any = RecordingConn()
    with pytest.raises((RedisTimeoutError, RedisConnectionError)):
        await lifecycle.open_session(hub, conn, None, None)
    assert hub.sessions == {}
    assert hub.detached == {}


async def test_a_resume_whose_claim_fails_is_detached_again(hub: Hub, redis_server: RedisHandle) -> None:
    first: Any = RecordingConn()
    session, resumed = await lifecycle.open_session(hub, first, None, None)
    assert not resumed
    await lifecycle.detach(hub, session, 1006)  # dropped: waits for a resume
    assert list(hub.detached) == [session.id]
    second: Any = RecordingConn()
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        with pytest.raises((RedisTimeoutError, RedisConnectionError)):
            await lifecycle.open_session(hub, second, None, Hello(type="hello", session=session.id, last_seq=0))
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    assert hub.sessions == {session.id: session}
    assert list(hub.detached) == [session.id], "the reaper would never end it"
    assert session.conn is None
    assert not session.replaying


async def test_a_hello_while_redis_refuses_writes_gets_unavailable_and_a_1013_close(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """An outage, not a bug: the client is told to come back (`unavailable`, 1013), not `internal` (1011)."""
    env = procs.redis_env_for_url(redis_server.url)
    g = start(services, procs.gateway(env, prefix, REDIS__SOCKET_TIMEOUT_S="0.3", REDIS__RETRIES="0"))
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        async with websockets.connect(ws_url(g), open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "infer", "id": "first", "task": "sentiment", "input": "x"}))
            frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    assert (frame["type"], frame["code"], frame["id"]) == ("error", "unavailable", "first"), frame
    assert frame["retry_after_ms"] > 0
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
