"""The frame log on a real Redis: sessions spread over several lanes (connections), each session's scripts still run
and report back in the order they were submitted, which is what keeps a session's seq numbers in delivery order."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import redis.asyncio as aioredis

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
