"""The cancel channel: a Pub/Sub wake-up for jobs being run, so a stream stops between two tokens. The cancel key in
Redis stays the truth (streams poll it too, and a threaded model's batch is screened against it), so a message lost
while the subscription reconnects costs a little latency, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rtai_telemetry.logging import get_logger
from rtai_transport import Redis
from rtai_transport.cancel import stop_if_cancelled

log = get_logger("rtai_worker.cancels")


async def listen_cancels(redis: Redis, channel: str, on_cancel: Callable[[str], None], retry_s: float = 1.0) -> None:
    """Call `on_cancel(job_id)` for each message on `channel`, resubscribing after errors, until cancelled."""
    while True:
        try:
            # A PubSub holds a connection of the client's fixed-size pool until it is closed: one dropped after an
            # error (Redis gone for longer than the client's retries) would hold it for good.
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                async for msg in pubsub.listen():
                    if msg.get("type") == "message":
                        on_cancel(msg["data"].decode())
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.debug("cancels.reconnect", error=type(e).__name__)
        stop_if_cancelled()
        await asyncio.sleep(retry_s)
