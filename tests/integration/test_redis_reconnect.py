"""The reply path survives the gateway's Redis connections dropping: replies written while its reader reconnects are
read from the reply stream's cursor afterwards, so every accepted request still gets exactly one final frame."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.support import procs
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

REQUESTS = 300
KILL_EVERY = 50


async def test_replies_written_while_connections_drop_are_all_delivered(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    unlimited = {"LIMITS__MESSAGES_PER_S": "10000", "LIMITS__MESSAGE_BURST": "10000"}
    g, _ = procs.vader_stack(redis_server.url, prefix, services, **unlimited)
    c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
    admin = aioredis.Redis.from_url(redis_server.url)
    killed = 0
    try:
        rids = []
        for i in range(REQUESTS):
            rids.append(await c.infer("sentiment", f"request {i} is fine"))
            if i % KILL_EVERY == KILL_EVERY - 1:
                # Every client connection but this one: the gateway's reader, its submit pool, the worker's.
                killed += await admin.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.002)
        finals = [await c.final(rid, timeout=30) for rid in rids]
    finally:
        await admin.aclose()
    assert killed >= REQUESTS // KILL_EVERY, "the connections were never dropped"
    accepted = {f["id"] for f in c.frames if f["type"] == "accepted"}
    for rid in accepted:
        assert len(c.finals(rid)) == 1, c.by_id[rid]
        assert c.finals(rid)[0]["type"] == "result", c.by_id[rid]
    # A request refused while the gateway could not reach Redis at all is told so (never silence).
    refused = [f for rid, f in zip(rids, finals, strict=True) if rid not in accepted]
    assert all(f["code"] == "unavailable" for f in refused), refused
    # A dropped connection is not an outage: the gateway reconnects at once rather than refusing for a while.
    assert len(accepted) >= REQUESTS * 0.9, f"only {len(accepted)} of {REQUESTS} accepted"
    await c.close()
