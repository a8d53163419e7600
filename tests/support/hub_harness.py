"""A real gateway Hub on the test Redis, without the web stack: the socket stand-in it delivers to, the hub with its
frame log (and, if asked, its reply reader) running, and a tracked request. For tests that force an interleaving of
the hub's own work."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from rtai_gateway import loops
from rtai_gateway.hub import Hub
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings
from rtai_protocol import Job
from rtai_transport import Keys, close_redis, create_redis
from tests.support.redis_server import RedisHandle


class RecordingConn:
    """Stands in for a socket's `Connection`: keeps every frame offered to it."""

    closed = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def offer(self, body: bytes) -> bool:
        self.frames.append(body)
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closed = True

    def decoded(self) -> list[dict[str, Any]]:
        return [orjson.loads(f) for f in self.frames]


@contextlib.asynccontextmanager
async def running_hub(
    redis_server: RedisHandle, prefix: str, *, read_replies: bool = False, **settings: Any
) -> AsyncIterator[Hub]:
    """A Hub whose frame log runs (and its reply reader, with `read_replies`); `settings` are GatewaySettings fields,
    `redis` merged into the test Redis's."""
    redis = {"url": redis_server.url, "prefix": prefix, **settings.pop("redis", {})}
    gw = GatewaySettings(redis=redis, **settings)
    client = create_redis(gw.redis)
    hub = Hub(gw, client, Keys(prefix), GatewayMetrics())
    tasks = [asyncio.create_task(hub.framelog.run())]
    if read_replies:
        pulse = loops.ReaderPulse()
        tasks.append(asyncio.create_task(loops.read_replies(hub, pulse)))
        await asyncio.wait_for(pulse.started.wait(), 5)
    try:
        yield hub
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await close_redis(client)


def job_for(hub: Hub, session: Session, rid: str) -> Job:
    """The job of request `rid` as this hub would have submitted it (30 s deadline, replies to this hub)."""
    now = int(time.time() * 1000)
    return Job(
        job_id=f"j-{rid}",
        request_id=rid,
        owner=session.identity,
        session=session.id,
        task="sentiment",
        input="x",
        deadline_ms=now + 30_000,
        enqueued_ms=now,
        reply_to=hub.reply_stream,
    )


def track(hub: Hub, session: Session, rid: str) -> Pending:
    """Request `rid`, tracked by the hub as in flight."""
    p = Pending(job=job_for(hub, session, rid), session=session, received=time.monotonic())
    hub.track(p)
    return p
