"""The gateway's one reply reader on a real Redis: a reply Redis refuses to log for good (here the request's key holds
the wrong type, so the log script fails on it) is retried a few times, then dropped, and the replies behind it keep
flowing. Before, the reader re-read the same batch for ever and nothing past its first 512 replies arrived."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ResponseError

from rtai_gateway import loops
from rtai_gateway.hub import Hub
from rtai_gateway.session import Session
from rtai_gateway.worker_replies import RepliesRejected
from rtai_protocol import Reply, encode
from rtai_transport import Redis
from tests.support.hub_harness import RecordingConn, running_hub
from tests.support.redis_server import RedisHandle

BEHIND = loops.READ_COUNT + 100
"""Replies queued behind the refused one: more than one read takes."""


def results(conn: RecordingConn) -> set[str]:
    return {f["id"] for f in conn.decoded() if f["type"] == "result"}


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    async with running_hub(redis_server, prefix, read_replies=True) as h:
        yield h


def _reply(session: Session, rid: str, *, chunk: int | None = None) -> Reply:
    """A worker's result for request `rid`, or its chunk number `chunk`."""
    return Reply(
        job_id=f"j-{rid}",
        request_id=rid,
        owner=session.identity,
        session=session.id,
        task="sentiment",
        kind="result" if chunk is None else "chunk",
        index=chunk or 0,
        data={"ok": True} if chunk is None else {"token": f"t{chunk}"},
    )


async def test_a_reply_redis_refuses_to_log_is_dropped_and_the_replies_behind_it_arrive(hub: Hub, redis: Redis) -> None:
    conn = RecordingConn()
    session = Session(id="s1", identity="anon:s1", conn=conn)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    await redis.set(hub.keys.request(session.identity, "poison"), "not a hash")  # the log script fails on it
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(hub.reply_stream, {"m": encode(_reply(session, "poison"))})
        for i in range(BEHIND):
            pipe.xadd(hub.reply_stream, {"m": encode(_reply(session, f"r{i}"))})
        await pipe.execute()
    deadline = time.monotonic() + 20
    while len(results(conn)) < BEHIND and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert len(results(conn)) == BEHIND, f"{len(results(conn))} of the {BEHIND} replies behind the refused one arrived"
    assert "poison" not in results(conn)
    counted: Any = hub.metrics.replies_rejected
    assert counted._value.get() == 1


async def test_replies_refused_while_redis_is_out_of_memory_wait_for_it_and_are_not_dropped(
    hub: Hub, redis: Redis
) -> None:
    conn = RecordingConn()
    session = Session(id="s2", identity="anon:s2", conn=conn)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    policy = (await redis.config_get("maxmemory-policy"))["maxmemory-policy"]
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.xadd(hub.reply_stream, {"m": encode(_reply(session, "final"))})
    await redis.config_set("maxmemory", 1)  # every write refused: OOM
    try:
        await asyncio.sleep(5)  # longer than the reads a reply refused for good gets
        assert results(conn) == set()
    finally:
        await redis.config_set("maxmemory", 0)
        await redis.config_set("maxmemory-policy", policy)
    deadline = time.monotonic() + 10
    while not results(conn) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert results(conn) == {"final"}, "a result refused while Redis was full was dropped"
    counted: Any = hub.metrics.replies_rejected
    assert counted._value.get() == 0


@pytest.mark.parametrize("refused_for_good", [False, True], ids=["refused-once", "refused-for-good"])
async def test_a_chunk_whose_log_op_fails_alone_is_not_skipped_by_the_frames_after_it(
    redis_server: RedisHandle, prefix: str, refused_for_good: bool
) -> None:
    """Redis refuses one op of a pipeline (out of memory for a moment) and runs the next. The chunks and the final
    behind the refused chunk wait for it instead of being logged past it (the log would skip it for good). A chunk
    refused for good is dropped in the end, and then the frames behind it go on without it."""
    async with running_hub(redis_server, prefix) as hub:
        conn = RecordingConn()
        session = Session(id="s3", identity="anon:s3", conn=conn)  # type: ignore[arg-type]
        hub.sessions[session.id] = session
        replies = [*(_reply(session, "r", chunk=i) for i in range(3)), _reply(session, "r")]
        lane = hub.framelog._lanes[hub.framelog.lane_of(session.id)]
        real = lane._pipeline
        error = ResponseError("ERR Error running script: refused" if refused_for_good else "OOM command not allowed")

        async def second_chunk_refused(ops: list[Any]) -> list[Any]:
            """Redis refuses the op logging chunk 1 alone; the ops around it run."""
            i = next((k for k, op in enumerate(ops) if op.args[1] == "chunk" and op.args[2] == 1), None)
            if i is None:
                return await real(ops)
            rest = await real(ops[:i] + ops[i + 1 :])
            return [*rest[:i], error, *rest[i:]]

        lane._pipeline = second_chunk_refused  # type: ignore[method-assign]
        expected = ResponseError if not refused_for_good else RepliesRejected
        with pytest.raises(expected):
            await hub.handle_replies(replies)
        if not refused_for_good:
            lane._pipeline = real  # type: ignore[method-assign]  # Redis has room again
        await hub.handle_replies(replies, drop_rejected=refused_for_good)  # the reader reads them again
        frames = [(f["type"], f.get("index"), f["seq"]) for f in conn.decoded()]
        sent = [(kind, index) for kind, index, _ in frames]
        if refused_for_good:
            assert sent == [("chunk", 0), ("chunk", 2), ("result", None)]
        else:
            assert sent == [("chunk", 0), ("chunk", 1), ("chunk", 2), ("result", None)]
        assert [seq for *_, seq in frames] == sorted({seq for *_, seq in frames})
