"""Interleavings of the gateway's own work on a real Redis and a real Hub: a request whose final comes while the
gateway awaits something before ending it itself is ended once, and a session resumed while its requests are being
cancelled keeps the rest of them. The interleaving is forced by a wrapper around one awaited call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rtai_gateway import ending, lifecycle
from rtai_gateway.hub import Hub
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_protocol import ErrorCode, encode
from rtai_protocol.codec import decode_internal
from rtai_protocol.internal import Forward
from tests.support.hub_harness import RecordingConn, job_for, running_hub, track
from tests.support.redis_server import RedisHandle


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    async with running_hub(redis_server, prefix) as h:
        yield h


def _counted(hub: Hub, rid_task: str = "sentiment") -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in hub.metrics.requests.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["task"] == rid_task
    }


async def test_a_request_whose_final_came_meanwhile_is_not_ended_again(hub: Hub) -> None:
    session = Session(id="s1", identity="anon:s1", conn=RecordingConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    p = track(hub, session, "r1")
    ending.finished(hub, p, "ok")  # the worker's result arrived while a cancel (or an earlier expiry) was awaiting
    await asyncio.wait_for(hub.finish_locally(p, ErrorCode.CANCELLED, "cancelled by the client"), 5)
    assert _counted(hub) == {"ok": 1.0}


async def test_a_session_resumed_while_its_requests_are_cancelled_keeps_the_rest(hub: Hub) -> None:
    session = Session(id="s2", identity="anon:s2", conn=RecordingConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    first, second = track(hub, session, "r1"), track(hub, session, "r2")
    await lifecycle.detach(hub, session, 1006)
    finish = hub.finish_locally
    resumed: Any = RecordingConn()

    async def resume_during_the_first(p: Pending, code: ErrorCode, message: str) -> None:
        await finish(p, code, message)
        session.conn = resumed  # as lifecycle._resume does, while end_session awaits

    hub.finish_locally = resume_during_the_first  # type: ignore[method-assign]
    await asyncio.wait_for(lifecycle.end_session(hub, session), 5)
    ended = [p for p in (first, second) if p.key not in hub.pending]
    assert len(ended) == 1, "only the request cancelled before the resume ends"
    assert hub.sessions.get(session.id) is session


async def test_a_final_forwarded_by_another_gateway_gives_back_the_requests_slot(hub: Hub) -> None:
    """A request this gateway tracks for a session it took over ends with a final the first gateway logged and
    forwards: the user's fair slot goes back (before: only untracked, so the user ran one slot short for good)."""
    session = Session(id="s3", identity="anon:s3", conn=RecordingConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    p = track(hub, session, "r1")
    released: list[tuple[str, str]] = []
    hub.finish_hooks.append(lambda ended: released.append(ended.key))
    final = '{"type":"result","id":"r1","output":1}'
    hub.deliver_forward(Forward(session="s3", seq=1, frame=final, owner="anon:s3", request_id="r1", final=True))
    assert released == [p.key]
    assert p.key not in hub.pending


@pytest.mark.parametrize("forwarded", [True, False], ids=["forwarded", "origin-died-before-forwarding"])
async def test_a_request_that_ends_while_its_session_is_taken_over_is_ended_once_with_its_final(
    hub: Hub, forwarded: bool
) -> None:
    """Gateway B resumes a session whose request R runs for gateway A (alive). A logs R's final right after B read the
    session's in-flight requests, and its forward reaches B before B tracks R (before: B then tracked R until its
    deadline, holding the user's slot and the drain, and counted it `deadline_exceeded`), or A dies before it
    forwards it: the socket still gets the final, once."""
    conn = RecordingConn()
    session = Session(id="s4", identity="anon:s4", conn=conn, fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    job = job_for(hub, session, "r1").model_copy(update={"reply_to": hub.keys.replies("gw-a")})
    await hub.redis.set(hub.keys.gateway_alive("gw-a"), b"1", ex=30)
    await hub.redis.hset(hub.keys.session_inflight(session.id), "r1", encode(job))
    hgetall = hub.redis.hgetall
    final = '{"type":"result","id":"r1","output":1}'

    async def then_a_logs_the_final(name: str) -> Any:
        snapshot = await hgetall(name)
        await hub.redis.hset(hub.keys.request(job.owner, "r1"), mapping={"final": final, "final_seq": 1})  # LOG_FRAME
        if forwarded:
            hub.deliver_forward(Forward(session="s4", seq=1, frame=final, owner=job.owner, request_id="r1", final=True))
        return snapshot

    hub.redis.hgetall = then_a_logs_the_final  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(lifecycle._take_over_inflight(hub, session), 5)
    finally:
        del hub.redis.hgetall
    assert (job.owner, "r1") not in hub.pending
    assert "r1" not in session.requests
    assert [(f["type"], f["seq"]) for f in conn.decoded()] == [("result", 1)]


async def test_a_request_ended_here_for_another_gateway_is_ended_there_too(hub: Hub) -> None:
    """This gateway took a session over from gateway A, which is alive and admitted request R (R's replies go to A).
    The client cancels R here: A is told with a forwarded final, so it stops tracking R now, not at R's deadline (a
    cancelled job sends no reply for A to end it by)."""
    session = Session(id="s5", identity="anon:s5", conn=RecordingConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    p = track(hub, session, "r1")
    p.job = p.job.model_copy(update={"reply_to": hub.keys.replies("gw-a")})
    await asyncio.wait_for(hub.finish_locally(p, ErrorCode.CANCELLED, "cancelled by the client"), 5)
    (entry,) = await hub.redis.xrange(hub.keys.replies("gw-a"))
    told = decode_internal(entry[1][b"m"])
    assert isinstance(told, Forward) and told.final
    assert (told.session, told.owner, told.request_id) == ("s5", "anon:s5", "r1")
    assert '"cancelled"' in told.frame and told.seq > 0
    assert await hub.redis.ttl(hub.keys.replies("gw-a")) > 0
    own = track(hub, session, "r2")  # one that runs for this gateway: nobody else to tell
    await asyncio.wait_for(hub.finish_locally(own, ErrorCode.CANCELLED, "cancelled by the client"), 5)
    assert await hub.redis.xlen(hub.keys.replies("gw-a")) == 1
    assert not await hub.redis.exists(hub.reply_stream)
