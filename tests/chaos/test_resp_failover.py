"""A hand-packed command batch (`rtai_transport.resp`: the frame log's scripts, the worker's reply-and-ack) whose
master dies under it is retried on the new one, as the client's other commands are.

redis-py reconnects a dropped connection by itself when it next sends, but to the address it had: under Sentinel that
is the dead master, and every retry would fail until the call gives up. `resp.run` reconnects through the
connection's own `connect()`, which asks the sentinels.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from rtai_transport import RedisSettings, close_redis, create_redis, resp
from tests.support.sentinel import MASTER_NAME, SentinelTopology


@pytest.mark.timeout(90)
async def test_a_batch_whose_master_died_is_retried_on_the_new_master(topology: SentinelTopology) -> None:
    settings = RedisSettings(sentinels=topology.sentinel_addrs, master=MASTER_NAME, prefix="respfo")
    client = create_redis(settings)  # the default retries that services use
    attempts: list[int] = []

    async def attempt(conn: AbstractConnection) -> list[Any]:
        attempts.append(conn.port)
        if len(attempts) == 1:  # connected to the master: it dies and a replica takes over before the send
            old = topology.master_port()
            await asyncio.to_thread(topology.master().kill)
            await asyncio.to_thread(topology.wait_new_master, old)
        return await resp.round_trip(conn, resp.pack([("INCR", "respfo:n")]), 1)

    try:
        assert await resp.run(client, attempt) == [1]
        assert len(attempts) == 2
        assert attempts[1] == topology.master_port() != attempts[0]
        assert await client.get("respfo:n") == b"1"
    finally:
        await close_redis(client)
