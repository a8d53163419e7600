"""The gateway's one reply reader on a real Redis: a reply Redis refuses to log for good (here the request's key holds
the wrong type, so the log script fails on it) is retried a few times, then dropped, and the replies behind it keep
flowing. Before, the reader re-read the same batch for ever and nothing past its first 512 replies arrived."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from rtai_gateway import loops
from rtai_gateway.hub import Hub
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings
from rtai_protocol import Reply, encode
from rtai_transport import Keys, Redis, close_redis, create_redis
from tests.support.redis_server import RedisHandle

BEHIND = loops.READ_COUNT + 100
"""Replies queued behind the refused one: more than one read takes."""


class FakeConn:
    closed = False

    def __init__(self) -> None:
        self.results: set[str] = set()

    def offer(self, body: bytes) -> bool:
        frame = orjson.loads(body)
        if frame["type"] == "result":
            self.results.add(frame["id"])
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closed = True


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    settings = GatewaySettings(redis={"url": redis_server.url, "prefix": prefix})
    client = create_redis(settings.redis)
    h = Hub(settings, client, Keys(prefix), GatewayMetrics())
    ready = asyncio.Event()
    tasks = [asyncio.create_task(h.framelog.run()), asyncio.create_task(loops.read_replies(h, ready))]
    await asyncio.wait_for(ready.wait(), 5)
    yield h
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await close_redis(client)


def _reply(session: Session, rid: str) -> Reply:
    return Reply(
        job_id=f"j-{rid}",
        request_id=rid,
        owner=session.identity,
        session=session.id,
        task="sentiment",
        kind="result",
        data={"ok": True},
    )


async def test_a_reply_redis_refuses_to_log_is_dropped_and_the_replies_behind_it_arrive(hub: Hub, redis: Redis) -> None:
    conn = FakeConn()
    session = Session(id="s1", identity="anon:s1", conn=conn)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    await redis.set(hub.keys.request(session.identity, "poison"), "not a hash")  # the log script fails on it
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(hub.reply_stream, {"m": encode(_reply(session, "poison"))})
        for i in range(BEHIND):
            pipe.xadd(hub.reply_stream, {"m": encode(_reply(session, f"r{i}"))})
        await pipe.execute()
    deadline = time.monotonic() + 20
    while len(conn.results) < BEHIND and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(conn.results) == BEHIND, f"{len(conn.results)} of the {BEHIND} replies behind the refused one arrived"
    assert "poison" not in conn.results
    counted: Any = hub.metrics.replies_rejected
    assert counted._value.get() == 1


async def test_replies_refused_while_redis_is_out_of_memory_wait_for_it_and_are_not_dropped(
    hub: Hub, redis: Redis
) -> None:
    conn = FakeConn()
    session = Session(id="s2", identity="anon:s2", conn=conn)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    policy = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.xadd(hub.reply_stream, {"m": encode(_reply(session, "final"))})
    await redis.config_set("maxmemory", 1)  # every write refused: OOM
    try:
        await asyncio.sleep(5)  # longer than the reads a reply refused for good gets
        assert conn.results == set()
    finally:
        await redis.config_set("maxmemory", 0)
        await redis.config_set("maxmemory-policy", policy)
    deadline = time.monotonic() + 10
    while not conn.results and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert conn.results == {"final"}, "a result refused while Redis was full was dropped"
    counted: Any = hub.metrics.replies_rejected
    assert counted._value.get() == 0
