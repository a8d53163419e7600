"""The gateway's background loops, each started by the lifespan and kept by reference.

Each loop re-raises CancelledError and survives any other exception with a logged, jittered pause: a Redis outage
slows them down, never kills them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rtai_gateway import lifecycle
from rtai_gateway.hub import Hub
from rtai_gateway.worker_replies import RepliesRejected
from rtai_protocol import Forward, Reply
from rtai_protocol.codec import UnsupportedMessage, decode_internal
from rtai_telemetry.logging import get_logger
from rtai_transport import close_redis, connection_name, create_redis
from rtai_transport.cancel import stop_if_cancelled

log = get_logger("rtai_gateway.loops")

READ_COUNT = 512
MAX_REJECTIONS = 5
"""Tries of a reply batch Redis refuses part of, before the refused replies are dropped (about 3 s with the backoff).
Their requests then end at their deadlines, answered by the gateway."""
TRIM_EVERY_S = 1.0


async def _forever(name: str, step: Callable[[], Awaitable[None]], pause_s: float) -> None:
    failures = 0
    while True:
        try:
            await step()
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as e:
            failures += 1
            if failures == 1:
                log.warning(f"{name}.failed", error=type(e).__name__, detail=str(e)[:200])
            await asyncio.sleep(min(pause_s * 2 ** min(failures, 6), 2.0) * random.uniform(0.5, 1.0))
        stop_if_cancelled()  # the lifespan's clean-up waits for this loop: a swallowed cancel held it until killed


@dataclass(eq=False)
class ReaderPulse:
    """What readiness knows of the reply reader: that it started, and when a read of the reply stream last succeeded
    (an empty one too: it blocks `reply_block_ms` at most). A reader that keeps failing while Redis answers the
    gateway's other calls (its commands refused by an access-list change, say) delivers no result at all."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    last_read: float = field(default_factory=time.monotonic)

    def silent_for_s(self) -> float:
        return time.monotonic() - self.last_read


async def read_replies(hub: Hub, pulse: ReaderPulse) -> None:
    """The one reader of this gateway's reply stream. Reads from a cursor, so a Redis reconnect loses nothing."""
    cursor = "0-0"  # the stream is new with this process: everything in it is ours
    block = hub.settings.sessions.reply_block_ms
    # A client of its own that does not retry: this loop retries with backoff itself, and reconnects to a newly
    # promoted master as soon as Sentinel names it (redis-py's nested retries could hang a blocked read for ~20 s).
    name = connection_name("rtai-gateway", hub.settings.gateway_id, "replies")
    redis = create_redis(hub.settings.redis, block_timeout_s=block / 1000, retries=0, name=name)
    trimmed_at = 0.0
    rejections = 0
    """Reads in a row of a batch Redis refused to log part of: retried (an out-of-memory passes), then dropped."""

    async def step() -> None:
        nonlocal cursor, trimmed_at, rejections
        pulse.started.set()
        resp: Any = await redis.xread({hub.reply_stream: cursor}, count=READ_COUNT, block=block)
        pulse.last_read = time.monotonic()
        if not resp:
            return
        entries = resp[0][1]
        replies: list[Reply] = []
        for _entry_id, fields in entries:
            try:
                msg = decode_internal(fields[b"m"])
            except (UnsupportedMessage, KeyError) as e:
                log.warning("reply.dropped", reason=str(e)[:200])
                continue
            if isinstance(msg, Reply):
                replies.append(msg)
            elif isinstance(msg, Forward):
                hub.deliver_forward(msg)
        if replies:
            try:
                await hub.handle_replies(replies, drop_rejected=rejections >= MAX_REJECTIONS)
            except RepliesRejected:
                rejections += 1
                raise
        rejections = 0
        # Advance only after handling: a failure above re-reads the same entries, and the log scripts drop repeats.
        cursor = entries[-1][0].decode()
        if time.monotonic() - trimmed_at >= TRIM_EVERY_S:
            # Read entries are ours alone and no longer needed; trimming once a second keeps a round trip off the
            # path between two reads. Nothing else trims it (a cap could drop replies not read yet).
            trimmed_at = time.monotonic()
            await redis.xtrim(hub.reply_stream, minid=cursor, approximate=True)

    try:
        await _forever("replies", step, 0.05)
    finally:
        await close_redis(redis)


async def reap(hub: Hub, interval_s: float = 0.05) -> None:
    async def step() -> None:
        await lifecycle.reap(hub)
        await asyncio.sleep(interval_s)

    await _forever("reap", step, interval_s)


async def heartbeat(hub: Hub, interval_s: float = 1.0) -> None:
    """Tell other gateways we are alive (they take over our sessions' work only when we are not), and take over the
    work of sessions adopted from gateways that have since gone."""
    key = hub.keys.gateway_alive(hub.gateway_id)

    async def step() -> None:
        async with hub.redis.pipeline(transaction=False) as pipe:
            pipe.set(key, b"1", ex=max(int(interval_s * 5), 3))
            pipe.expire(hub.reply_stream, hub.settings.sessions.ttl_s)
            await pipe.execute()
        await lifecycle.adopt_orphans(hub)
        await asyncio.sleep(interval_s)

    await _forever("heartbeat", step, interval_s)
