"""A hand-packed command batch (`rtai_transport.resp`: the frame log's scripts, the worker's reply-and-ack) whose
master dies under it is retried on the new one, as the client's other commands are.

redis-py reconnects a dropped connection by itself when it next sends, but to the address it had: under Sentinel that
is the dead or demoted master, and every retry would fail until the call gives up. `resp.run` reconnects through the
connection's own `connect()`, which asks the sentinels; the client's other commands reconnect through
`MasterSeekingConnection`, which asks them on every connect.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
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


@pytest.mark.timeout(90)
async def test_a_command_in_flight_during_a_failover_is_retried_on_the_new_master(
    topology: SentinelTopology,
) -> None:
    """A blocked command whose connection the failover cuts is retried by the client's Retry: on the new master.
    Before, redis-py reconnected it to the address it had (the demoted master) and every retry failed with READONLY,
    though the very next command, on a fresh connection, reached the new master."""
    settings = RedisSettings(sentinels=topology.sentinel_addrs, master=MASTER_NAME, prefix="respfo")
    client = create_redis(settings, block_timeout_s=30)
    try:
        await client.set("respfo:warm", b"1")
        old = topology.master_port()
        blpop = asyncio.create_task(client.blpop(["respfo:q"], timeout=25))
        await asyncio.sleep(0.3)
        sentinel = redis.Redis(port=topology.sentinels[0].port, socket_timeout=5)
        sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)  # the old master stays up, demoted
        await asyncio.to_thread(topology.wait_new_master, old)
        new = topology.master_port()
        await asyncio.sleep(3)  # the demoted master has dropped its clients and turned replica by now
        redis.Redis(port=new, socket_timeout=2).rpush("respfo:q", b"v")
        assert tuple(await asyncio.wait_for(blpop, 20)) == (b"respfo:q", b"v")
    finally:
        await close_redis(client)
