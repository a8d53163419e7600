"""A request's state as the gateway keeps it in Redis, and the worker replies a test writes in a worker's place."""

from __future__ import annotations

from typing import Any

from rtai_protocol import Job, Reply, encode
from rtai_transport import Keys, Redis


async def request_key(redis: Redis, keys: Keys, request_id: str) -> str:
    """The request hash of `request_id` (its owner, part of the key, is the gateway's to choose)."""
    [key] = [k async for k in redis.scan_iter(match=f"{keys.root}:req:*:{request_id}")]
    return key.decode() if isinstance(key, bytes) else str(key)


async def job_of(redis: Redis, keys: Keys, request_id: str) -> Job:
    return Job.model_validate_json(await redis.hget(await request_key(redis, keys, request_id), "job"))


async def reply_as_worker(redis: Redis, job: Job, data: Any) -> None:
    """Write a `result` for `job` to its gateway's reply stream, as a worker (re-)running it would."""
    reply = Reply(
        job_id=job.job_id,
        request_id=job.request_id,
        owner=job.owner,
        session=job.session,
        task=job.task,
        kind="result",
        data=data,
    )
    await redis.xadd(job.reply_to, {"m": encode(reply)})
