"""How much work waits for a task: the numbers admission control and autoscaling act on."""

from __future__ import annotations

import time
from collections.abc import Iterable
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


async def read_backlogs(redis: Redis, keys: Keys, tasks: Iterable[str]) -> dict[str, Backlog]:
    """Every task's backlog in one pipelined round trip: a gateway reads them for every registered task each refresh,
    and one round trip per task would grow its refresh with the task count."""
    names = list(tasks)
    if not names:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for task in names:
            stream = keys.jobs(task)
            pipe.xlen(stream)
            pipe.xrange(stream, count=1)
            pipe.xpending(stream, WORKER_GROUP)
        replies = await pipe.execute(raise_on_error=False)
    now_ms = time.time() * 1000
    backlogs: dict[str, Backlog] = {}
    for i, task in enumerate(names):
        length, first, pending = replies[3 * i : 3 * i + 3]
        for reply in (length, first):
            if isinstance(reply, Exception):
                raise reply
        if isinstance(pending, ResponseError) and "NOGROUP" in str(pending):
            # No worker has created the group yet; the stream itself may still hold jobs (queued for a scale-up).
            pending = {"pending": 0}
        elif isinstance(pending, Exception):
            raise pending
        oldest = (now_ms - _entry_ms(first[0][0])) / 1000 if first else 0.0
        backlogs[task] = Backlog(length=int(length), pending=int(pending["pending"]), oldest_age_s=max(oldest, 0.0))
    return backlogs
