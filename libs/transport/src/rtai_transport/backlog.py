"""How much work waits for a task: the numbers admission control and autoscaling act on."""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.exceptions import ResponseError

from rtai_transport.client import Redis
from rtai_transport.keys import WORKER_GROUP, Keys


@dataclass(frozen=True, slots=True)
class Backlog:
    length: int
    """Jobs in the stream (undelivered + pending: workers delete a job once it is acked)."""
    pending: int
    """Delivered to a worker, not yet acked."""
    oldest_age_s: float
    """Age of the oldest job still in the stream (waiting or running)."""

    @property
    def waiting(self) -> int:
        return max(self.length - self.pending, 0)


EMPTY = Backlog(0, 0, 0.0)


def _entry_ms(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


async def read_backlog(redis: Redis, keys: Keys, task: str) -> Backlog:
    stream = keys.jobs(task)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(stream)
        pipe.xrange(stream, count=1)
        pipe.xpending(stream, WORKER_GROUP)
        try:
            length, first, pending = await pipe.execute()
        except ResponseError:
            # NOGROUP: no worker has created the group yet; the stream itself may still hold jobs.
            length = await redis.xlen(stream)
            first = await redis.xrange(stream, count=1)
            pending = {"pending": 0}
    oldest = (time.time() * 1000 - _entry_ms(first[0][0])) / 1000 if first else 0.0
    return Backlog(length=int(length), pending=int(pending["pending"]), oldest_age_s=max(oldest, 0.0))
