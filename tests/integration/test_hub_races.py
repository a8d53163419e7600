"""Interleavings of the gateway's own work on a real Redis and a real Hub: a request whose final comes while the
gateway awaits something before ending it itself is ended once, and a session resumed while its requests are being
cancelled keeps the rest of them. The interleaving is forced by a wrapper around one awaited call."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rtai_gateway import lifecycle
from rtai_gateway.hub import Hub, Pending
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings
from rtai_protocol import ErrorCode, Job
from rtai_transport import Keys, close_redis, create_redis
from tests.support.redis_server import RedisHandle


class FakeConn:
    closed = False

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def offer(self, body: bytes) -> bool:
        self.frames.append(body)
        return True

    def close(self, code: int, reason: str = "") -> None:
        self.closed = True


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    settings = GatewaySettings(redis={"url": redis_server.url, "prefix": prefix})
    client = create_redis(settings.redis)
    h = Hub(settings, client, Keys(prefix), GatewayMetrics())
    running = asyncio.create_task(h.framelog.run())
    yield h
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    await close_redis(client)


def _track(hub: Hub, session: Session, rid: str) -> Pending:
    now = int(time.time() * 1000)
    job = Job(
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
    p = Pending(job=job, session=session, received=time.monotonic())
    hub.track(p)
    return p


def _counted(hub: Hub, rid_task: str = "sentiment") -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in hub.metrics.requests.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["task"] == rid_task
    }


async def test_a_request_whose_final_came_meanwhile_is_not_ended_again(hub: Hub) -> None:
    session = Session(id="s1", identity="anon:s1", conn=FakeConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    p = _track(hub, session, "r1")
    hub._finished(p, "ok")  # the worker's result arrived while a cancel (or an earlier expiry) was awaiting
    await asyncio.wait_for(hub.finish_locally(p, ErrorCode.CANCELLED, "cancelled by the client"), 5)
    assert _counted(hub) == {"ok": 1.0}


async def test_a_session_resumed_while_its_requests_are_cancelled_keeps_the_rest(hub: Hub) -> None:
    session = Session(id="s2", identity="anon:s2", conn=FakeConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    first, second = _track(hub, session, "r1"), _track(hub, session, "r2")
    await lifecycle.detach(hub, session, 1006)
    finish = hub.finish_locally
    resumed: Any = FakeConn()

    async def resume_during_the_first(p: Pending, code: ErrorCode, message: str) -> None:
        await finish(p, code, message)
        session.conn = resumed  # as lifecycle._resume does, while end_session awaits

    hub.finish_locally = resume_during_the_first  # type: ignore[method-assign]
    await asyncio.wait_for(lifecycle.end_session(hub, session), 5)
    ended = [p for p in (first, second) if p.key not in hub.pending]
    assert len(ended) == 1, "only the request cancelled before the resume ends"
    assert hub.sessions.get(session.id) is session
