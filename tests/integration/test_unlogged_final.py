"""A final frame the gateway sends unnumbered while Redis refuses writes (a deadline passing during an outage): the
socket that got it does not get the worker's result, logged once Redis is back, as a second final; a socket that did
not get it (the session was detached, or resumed since) gets the result. Redis is real; `CLIENT PAUSE ... WRITE` times
out the gateway's log write as an outage would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from rtai_gateway import lifecycle
from rtai_gateway.hub import Hub
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_protocol import ErrorCode, Hello, Job, Reply
from tests.support.hub_harness import RecordingConn, job_for, running_hub
from tests.support.redis_server import RedisHandle


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    redis = {"socket_timeout_s": 0.3, "retries": 0}
    async with running_hub(redis_server, prefix, redis=redis, sessions={"detach_grace_s": 30}) as h:
        yield h


def finals(conn: RecordingConn, rid: str) -> list[dict[str, Any]]:
    return [f for f in conn.decoded() if f.get("id") == rid and f["type"] in ("result", "error")]


def _result(job: Job) -> Reply:
    return Reply(
        job_id=job.job_id, request_id=job.request_id, owner=job.owner, session=job.session, task=job.task, kind="result"
    )


async def _end_while_writes_fail(hub: Hub, redis_server: RedisHandle, p: Pending) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    try:
        await hub.finish_locally(p, ErrorCode.DEADLINE_EXCEEDED, "no result within the request's deadline")
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


async def _resume(hub: Hub, session: Session, last_seq: int) -> RecordingConn:
    await lifecycle.detach(hub, session, 1006)  # the network drops; the client resumes on this gateway
    conn = RecordingConn()
    hello = Hello(type="hello", session=session.id, last_seq=last_seq)
    resumed, was_resumed = await lifecycle.open_session(hub, conn, None, hello)  # type: ignore[arg-type]
    assert was_resumed and resumed is session
    await lifecycle.replay(hub, session)
    return conn


async def test_the_socket_that_got_an_unlogged_final_does_not_get_the_result_logged_later(
    hub: Hub, redis_server: RedisHandle
) -> None:
    first = RecordingConn()
    session, _ = await lifecycle.open_session(hub, first, None, None)  # type: ignore[arg-type]
    job = job_for(hub, session, "r1")
    p = Pending(job=job, session=session, received=time.monotonic())
    hub.track(p)
    await _end_while_writes_fail(hub, redis_server, p)
    [sent] = finals(first, "r1")
    assert sent["code"] == "deadline_exceeded" and "seq" not in sent, sent

    await hub.handle_replies([_result(job)])  # the job ran after all; logged now that Redis takes writes again
    assert [seq for seq, _ in await hub.logged_after(session)], "the result should be in the session log"
    assert finals(first, "r1") == [sent], "the live socket got a second final"

    # A new socket may have lost the unnumbered frame with the old one: the replay sends the logged result (a second
    # final, which clients ignore, rather than none).
    second = await _resume(hub, session, last_seq=0)
    assert [f["type"] for f in finals(second, "r1")] == ["result"]


async def test_an_unlogged_final_that_reached_no_socket_leaves_the_result_to_be_the_final(
    hub: Hub, redis_server: RedisHandle
) -> None:
    first = RecordingConn()
    session, _ = await lifecycle.open_session(hub, first, None, None)  # type: ignore[arg-type]
    job = job_for(hub, session, "r1")
    p = Pending(job=job, session=session, received=time.monotonic())
    hub.track(p)
    await lifecycle.detach(hub, session, 1006)
    await _end_while_writes_fail(hub, redis_server, p)  # the deadline passes while detached and Redis is down
    second = await _resume(hub, session, last_seq=0)
    hub.track(Pending(job=job, session=session, received=time.monotonic()))  # the client sent it again: adopted
    await hub.handle_replies([_result(job)])
    # Before: the unlogged final counted as sent, and the result, the only final that could reach the client, was
    # dropped as a second one.
    assert [f["type"] for f in finals(second, "r1")] == ["result"]
    assert finals(first, "r1") == []
