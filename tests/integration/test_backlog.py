"""The backlog readings admission control and autoscaling act on, read for many tasks in one round trip."""

from __future__ import annotations

import pytest
from redis.exceptions import ResponseError

from rtai_transport import Keys, Redis
from rtai_transport.backlog import read_backlogs
from rtai_transport.keys import WORKER_GROUP


async def test_each_task_reads_its_own_backlog_with_or_without_a_group(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    # "served": a worker's group exists; 3 jobs, 1 of them delivered and not acked.
    await redis.xgroup_create(keys.jobs("served"), WORKER_GROUP, id="0", mkstream=True)
    for _ in range(3):
        await redis.xadd(keys.jobs("served"), {"j": "1"})
    await redis.xreadgroup(WORKER_GROUP, "w1", {keys.jobs("served"): ">"}, count=1)
    # "queued": jobs queued while its workers are at zero, before any worker made the group.
    await redis.xadd(keys.jobs("queued"), {"j": "1"}, id="1-0")
    await redis.xadd(keys.jobs("queued"), {"j": "1"})

    backlogs = await read_backlogs(redis, keys, ["served", "queued", "absent"])

    assert list(backlogs) == ["served", "queued", "absent"]
    served, queued, absent = backlogs["served"], backlogs["queued"], backlogs["absent"]
    assert (served.length, served.pending, served.waiting) == (3, 1, 2)
    assert served.oldest_age_s < 60
    assert (queued.length, queued.pending, queued.waiting) == (2, 0, 2)
    assert queued.oldest_age_s > 1e6  # its first entry is from 1970
    assert (absent.length, absent.pending, absent.oldest_age_s) == (0, 0, 0.0)
    assert await read_backlogs(redis, keys, []) == {}


async def test_an_error_other_than_a_missing_group_is_raised(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    await redis.set(keys.jobs("wrongtype"), "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await read_backlogs(redis, keys, ["wrongtype"])
