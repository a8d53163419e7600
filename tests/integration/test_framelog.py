"""The frame log on a real Redis: sessions spread over several lanes (connections), each session's scripts still run
and report back in the order they were submitted, which is what keeps a session's seq numbers in delivery order."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from rtai_gateway.framelog import FrameLog
from rtai_transport import Redis, RedisSettings
from tests.support.redis_server import RedisHandle

SESSIONS = 16
PER_SESSION = 50
LANES = 4
NAME = "rtai-gateway:test:framelog"

# A session counter, as the gateway's scripts number frames; the sleep-free loop makes each run take a moment, so
# lanes really overlap.
NUMBER = """
for i = 1, 200 do redis.call('GET', KEYS[1]) end
return redis.call('INCR', KEYS[1])
"""


async def test_each_session_keeps_its_order_across_lanes(redis_server: RedisHandle, redis: Redis, prefix: str) -> None:
    log = FrameLog(RedisSettings(url=redis_server.url), lanes=LANES, name=NAME)
    script = redis.register_script(NUMBER)  # not loaded yet: each lane loads it on NOSCRIPT and runs the batch again
    running = asyncio.create_task(log.run())
    seen: dict[str, list[int]] = defaultdict(list)
    # Sessions for every lane (a lane with none never connects), SESSIONS // LANES each.
    by_lane: dict[int, list[str]] = defaultdict(list)
    for i in range(SESSIONS * 100):
        if len(by_lane[log.lane_of(f"s{i}")]) < SESSIONS // LANES:
            by_lane[log.lane_of(f"s{i}")].append(f"s{i}")
    sessions = [s for lane in by_lane.values() for s in lane]
    assert len(sessions) == SESSIONS
    try:
        done = [
            log.submit(
                session,
                script,
                [f"{prefix}:seq:{session}"],
                [],
                lambda res, session=session: seen[session].append(int(res)),
            )
            for n in range(PER_SESSION)
            for session in sessions
        ]
        await asyncio.wait_for(asyncio.gather(*done), 30)
        admin = aioredis.Redis.from_url(redis_server.url)
        try:
            lanes = [c for c in await admin.client_list() if c.get("name") == NAME]
        finally:
            await admin.aclose()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert dict(seen) == {s: list(range(1, PER_SESSION + 1)) for s in sessions}
    assert len(lanes) == LANES, f"every lane should hold its own connection: {lanes}"


async def test_a_node_without_the_scripts_keeps_a_sessions_order(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """A node that knows one of the batch's scripts but not the other (a failover's new master, another lane having
    loaded one meanwhile) would answer NOSCRIPT to some ops and run the rest: re-run after loading, the first ops
    would be numbered after the later ones. Scripts are loaded before a batch, and again on every new connection."""
    log = FrameLog(RedisSettings(url=redis_server.url), lanes=1, name=NAME)
    key = f"{prefix}:seq:s"
    first = redis.register_script(NUMBER)
    second = redis.register_script(NUMBER + "\n-- the same numbering, another script\n")
    running = asyncio.create_task(log.run())
    seen: list[int] = []
    admin = aioredis.Redis.from_url(redis_server.url)

    def batch(*scripts: object) -> list[asyncio.Future[None]]:
        # Queued together, so the lane sends them in one batch.
        return [log.submit("s", s, [key], [], lambda res: seen.append(int(res))) for s in scripts]  # type: ignore[arg-type]

    try:
        await asyncio.wait_for(asyncio.gather(*batch(first)), 10)
        await asyncio.wait_for(asyncio.gather(*batch(second, first)), 10)  # `second` is new to this lane
        # A new node: it lost every script, then learnt one of them; the lane's connection is new too.
        await admin.script_flush()
        await admin.script_load(NUMBER)
        for c in await admin.client_list():
            if c.get("name") == NAME:
                await admin.client_kill_filter(_id=c["id"])
        await asyncio.wait_for(asyncio.gather(*batch(second, first, second)), 10)
    finally:
        await admin.aclose()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert seen == [1, 2, 3, 4, 5, 6], "a session's numbers must come back in the order its frames were queued"


async def test_a_failed_batch_fails_the_queued_ops_of_its_sessions_too(
    redis_server: RedisHandle, redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ops of a session queued behind a batch that failed were submitted before the failure: run, they would number a
    session's later frame before its earlier one, which its caller submits again. They fail with the batch; other
    sessions' ops run. The first batch's failure is injected (the connection refused, as in a failover); Redis is
    real for the rest."""
    log = FrameLog(RedisSettings(url=redis_server.url), lanes=1, name=NAME)
    script = redis.register_script(NUMBER)
    lane = log._lanes[0]
    execute = lane._execute
    release = asyncio.Event()

    async def first_batch_fails(ops: list[Any]) -> list[Any]:
        if not release.is_set():
            await release.wait()
            raise RedisConnectionError("refused: the master is being replaced")
        return await execute(ops)

    monkeypatch.setattr(lane, "_execute", first_batch_fails)
    running = asyncio.create_task(log.run())
    results: dict[str, Any] = {}

    def op(session: str, name: str) -> asyncio.Future[None]:
        return log.submit(session, script, [f"{prefix}:seq:{session}"], [], lambda res: results.__setitem__(name, res))

    try:
        first = op("s", "s-chunk-0")
        await asyncio.sleep(0.1)  # the lane took it and is running it
        behind = [op("s", "s-chunk-1"), op("t", "t-frame")]
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *behind), 10)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert isinstance(results["s-chunk-0"], RedisConnectionError)
    assert isinstance(results["s-chunk-1"], RedisConnectionError), "a session's later op ran after its earlier failed"
    assert results["t-frame"] == 1
    assert await redis.get(f"{prefix}:seq:s") is None
