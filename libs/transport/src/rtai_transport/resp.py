"""Commands packed and sent by hand, for the hot paths where redis-py's Pipeline cost more CPU than the commands.

redis-py packs every command through a generic encoder and reads every reply under its own timeout, with per-pipeline
bookkeeping around it: ~20% of the gateway's CPU for the frame log's batches, ~17% of a worker's for its
reply-and-ack transaction (docs/performance.md). Here a batch is packed straight into RESP, sent in one write and its
replies read under one deadline, on a connection of the client's own pool and with the client's own Retry.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import BusyLoadingError, ExecAbortError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtai_transport.client import Redis

RETRY_REPLIES = (ReadOnlyError, BusyLoadingError)
"""Error replies that refuse the whole batch for a while (a failover, a restart): retried, not results."""

Arg = bytes | str | int
Command = Sequence[Arg]


def pack(commands: Iterable[Command]) -> bytes:
    """Commands in RESP, as redis-py would send them (bytes as they are, text as UTF-8, integers in decimal)."""
    out = bytearray()
    for args in commands:
        out += b"*%d\r\n" % len(args)
        for a in args:
            if isinstance(a, bytes):
                b = a
            elif isinstance(a, str):
                b = a.encode()
            elif isinstance(a, int) and not isinstance(a, bool):
                b = b"%d" % a
            else:
                raise TypeError(f"packed command arguments are bytes, str or int, not {type(a).__name__}")
            out += b"$%d\r\n" % len(b)
            out += b
            out += b"\r\n"
    return bytes(out)


async def round_trip(conn: AbstractConnection, packed: bytes, replies: int) -> list[Any]:
    """Send packed commands and read their replies; an error reply is that command's result (not raised), except
    one that says the server takes no writes now (`RETRY_REPLIES`)."""
    await conn.send_packed_command(packed, check_health=False)  # a dead connection fails the read: retried
    results: list[Any] = []
    try:
        # One deadline for the batch, not one per reply (`math.inf`: no per-read timeout). A read cancelled by it
        # disconnects, so no half-read reply is left on the connection.
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(replies):
                try:
                    results.append(await conn.read_response(timeout=math.inf))
                except ResponseError as e:
                    results.append(e)
    except TimeoutError:
        raise RedisTimeoutError(f"timed out reading the replies to {replies} commands") from None
    for r in results:
        if isinstance(r, RETRY_REPLIES):
            # A replica's READONLY or a loading server's LOADING refuses every write of the batch: raised (all
            # replies read, so the connection stays clean), the batch is retried as any command of the client is.
            raise r
    return results


async def run(
    redis: Redis,
    attempt: Callable[[AbstractConnection], Awaitable[list[Any]]],
) -> list[Any]:
    """Run `attempt` on a connection of the client's pool, reconnected and run again as the client's other commands
    are (on the error types its Retry names: a dropped connection, a failover's READONLY...)."""
    pool = redis.connection_pool
    conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def connected_attempt() -> list[Any]:
        # Reconnect through the connection's own connect(): a Sentinel-managed one asks the sentinels for the current
        # master there, while the reconnect a send does by itself goes back to the address it had (the dead master).
        if not conn.is_connected:
            await conn.connect()  # type: ignore[no-untyped-call]
        return await attempt(conn)

    try:
        results: list[Any] = await conn.retry.call_with_retry(connected_attempt, lambda _error: conn.disconnect())
        return results
    finally:
        await pool.release(conn)


async def transaction(redis: Redis, commands: Sequence[Command]) -> list[Any]:
    """Run commands in one MULTI/EXEC and return their replies. Raises the first error, as redis-py's transactional
    pipeline does: a command refused while queued (a failover's READONLY aborts the whole transaction and is
    retried) or one that failed inside EXEC (the others did run)."""
    packed = pack([("MULTI",), *commands, ("EXEC",)])

    async def attempt(conn: AbstractConnection) -> list[Any]:
        replies = await round_trip(conn, packed, len(commands) + 2)
        queued = [r for r in replies[:-1] if isinstance(r, Exception)]
        executed = replies[-1]
        if isinstance(executed, ExecAbortError) and queued:
            raise queued[0] from executed
        if isinstance(executed, Exception):
            raise executed
        if not isinstance(executed, list) or len(executed) != len(commands):
            await conn.disconnect()
            raise ResponseError(f"EXEC answered {executed!r} to {len(commands)} commands")
        return executed

    results = await run(redis, attempt)
    for r in results:
        if isinstance(r, Exception):
            raise r
    return results
