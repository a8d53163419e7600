"""Hand-packed transactions (`rtai_transport.resp.transaction`, the worker's reply-and-ack) on a real Redis: replies
in order, errors raised as redis-py's transactional pipeline raises them, a dropped connection retried."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ReadOnlyError, ResponseError

from rtai_transport import Redis, resp
from tests.support.redis_server import RedisHandle


async def test_a_transaction_answers_every_command_in_order(redis: Redis, prefix: str) -> None:
    stream = f"{prefix}:s"
    out = await resp.transaction(
        redis,
        [
            ("XADD", stream, "MAXLEN", "~", 100, "*", "m", b"one"),
            ("XADD", stream, "MAXLEN", "~", 100, "*", "m", b"two"),
            ("EXPIRE", stream, 60),
            ("XLEN", stream),
        ],
    )
    assert out[2:] == [1, 2]
    entries = await redis.xrange(stream)
    assert [e[0] for e in entries] == out[:2]
    assert [e[1][b"m"] for e in entries] == [b"one", b"two"]


async def test_a_refused_command_aborts_the_transaction_and_is_raised(redis: Redis, prefix: str) -> None:
    with pytest.raises(ResponseError, match="wrong number of arguments"):
        await resp.transaction(redis, [("SET", f"{prefix}:a", b"1"), ("XADD", f"{prefix}:s")])
    assert await redis.exists(f"{prefix}:a") == 0  # nothing ran


async def test_an_error_inside_exec_is_raised_after_the_others_ran(redis: Redis, prefix: str) -> None:
    await redis.set(f"{prefix}:str", b"x")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await resp.transaction(redis, [("XADD", f"{prefix}:str", "*", "m", b"1"), ("SET", f"{prefix}:after", b"ran")])
    assert await redis.get(f"{prefix}:after") == b"ran"


async def test_a_connection_dropped_before_the_send_is_retried_on_a_fresh_one(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    await redis.ping()  # the pool's one idle connection, which the server now drops
    pool = redis.connection_pool
    conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
    client_id = await conn.retry.call_with_retry(lambda: _client_id(conn), lambda _e: conn.disconnect())
    await pool.release(conn)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        assert await admin.client_kill_filter(_id=client_id) == 1
    finally:
        await admin.aclose()
    out = await resp.transaction(redis, [("INCR", f"{prefix}:n")])
    assert out == [1]
    assert await redis.get(f"{prefix}:n") == b"1"  # ran once


async def _client_id(conn: AbstractConnection) -> int:
    await conn.send_command("CLIENT", "ID")
    return int(await conn.read_response())


async def test_a_batch_a_read_only_server_refuses_is_retried_not_answered(redis: Redis, prefix: str) -> None:
    """READONLY (a demoted master behind a fixed address) refuses every write of a batch: the batch is retried as
    the client's commands are, and raised when the retries run out, never handed back as one script's result."""
    readonly = "return redis.error_reply('READONLY You cannot write against a read only replica.')"
    attempts = 0

    async def attempt(conn: AbstractConnection) -> list[Any]:
        nonlocal attempts
        attempts += 1
        return await resp.round_trip(conn, resp.pack([("INCR", f"{prefix}:n"), ("EVAL", readonly, 0)]), 2)

    with pytest.raises(ReadOnlyError):
        await resp.run(redis, attempt)
    assert attempts > 1, "not retried"
    assert await redis.ping()  # the connection went back to the pool clean
