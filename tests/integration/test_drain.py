"""A draining gateway (SIGTERM) turns new sockets away with 1012, the close code that tells a client to reconnect
(to any gateway) and resume, while it finishes the requests it holds."""

from __future__ import annotations

import asyncio
import signal

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.support import procs
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn


async def test_a_draining_gateway_closes_new_sockets_with_1012(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    start(services, procs.worker(env, prefix, tasks="slow=tests.support.fake_models:slow", RTAI_TEST_SLOW_MS="2000"))
    g = start(services, procs.gateway(env, prefix, DRAIN_S="20"))
    g.wait_task("slow")
    c = await Conn(ws_url(g)).open()
    rid = await c.infer("slow", "held through the drain")
    await c.wait_for(lambda f: f["type"] == "accepted", 5)
    g.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)  # draining: the slow request keeps it from closing
    ws = await websockets.connect(ws_url(g), open_timeout=5)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012, closed.value
    assert (await c.final(rid, timeout=10))["type"] == "result"  # what it held still finished
    await c.close()
