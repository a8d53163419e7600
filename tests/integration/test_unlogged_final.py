"""A final frame the gateway sends unnumbered while Redis refuses writes stays the request's only final: the worker's
result, logged once Redis is back, reaches neither the live socket nor a resume's replay. Redis is real; `CLIENT PAUSE
... WRITE` times out the gateway's log write as an outage would."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from rtai_gateway import lifecycle
from rtai_gateway.hub import Hub, Pending
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.settings import GatewaySettings
from rtai_protocol import ErrorCode, Hello, Job, Reply
from rtai_transport import Keys, close_redis, create_redis
from tests.support.redis_server import RedisHandle


class FakeConn:
    closed = False

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def offer(self, body: bytes) -> bool:
        self.frames.append(orjson.loads(body))
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closed = True


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    settings = GatewaySettings(
        redis={"url": redis_server.url, "prefix": prefix, "socket_timeout_s": 0.3, "retries": 0},
        sessions={"detach_grace_s": 30},
    )
    client = create_redis(settings.redis)
    h = Hub(settings, client, Keys(prefix), GatewayMetrics())
    running = asyncio.create_task(h.framelog.run())
    yield h
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await close_redis(client)


def finals(conn: FakeConn, rid: str) -> list[dict[str, Any]]:
    return [f for f in conn.frames if f.get("id") == rid and f["type"] in ("result", "error")]


async def test_a_result_logged_after_an_unlogged_final_is_not_replayed_on_resume(
    hub: Hub, redis_server: RedisHandle
) -> None:
    first = FakeConn()
    session, _ = await lifecycle.open_session(hub, first, None, None)  # type: ignore[arg-type]
    now = int(time.time() * 1000)
    job = Job(
        job_id="j-r1",
        request_id="r1",
        owner=session.identity,
        session=session.id,
        task="sentiment",
        input="x",
        deadline_ms=now + 30_000,
        enqueued_ms=now,
        reply_to=hub.reply_stream,
    )
    p = Pending(job=job, session=session, received=time.monotonic())
    hub.track(p)

    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        await hub.finish_locally(p, ErrorCode.DEADLINE_EXCEEDED, "no result within the request's deadline")
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
    [sent] = finals(first, "r1")
    assert sent["code"] == "deadline_exceeded" and "seq" not in sent, sent

    # The job ran after all; its result is logged now that Redis takes writes again.
    result = Reply(
        job_id=job.job_id, request_id="r1", owner=job.owner, session=session.id, task="sentiment", kind="result"
    )
    await hub.handle_replies([result])
    assert [seq for seq, _ in await hub.logged_after(session)], "the result should be in the session log"
    assert finals(first, "r1") == [sent], "the live socket got a second final"

    await lifecycle.detach(hub, session, 1006)  # the network drops; the client resumes on this gateway
    second = FakeConn()
    hello = Hello(type="hello", session=session.id, last_seq=0)
    resumed, was_resumed = await lifecycle.open_session(hub, second, None, hello)  # type: ignore[arg-type]
    assert was_resumed and resumed is session
    await lifecycle.replay(hub, session)
    assert finals(second, "r1") == [], "the replay sent a second final"

    # Frames after the skipped one still reach the socket.
    p2 = Pending(job=job.model_copy(update={"job_id": "j-r2", "request_id": "r2"}), session=session, received=0)
    hub.track(p2)
    await hub.handle_replies([result.model_copy(update={"job_id": "j-r2", "request_id": "r2"})])
    assert [f["type"] for f in finals(second, "r2")] == ["result"]
