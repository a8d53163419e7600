"""`python -m rtai_worker declare`: record this worker's tasks in the registry without serving them, and remove the
retired ones. `python -m rtai_worker forget TASK...`: remove tasks from the registry.

A task becomes known to the gateways when a worker registers it, which happens only once that worker has loaded its
model. Where workers scale to zero, a task whose workers have never run (a new deployment, a task added while its
workers are at zero) would be unknown, its requests refused `unknown_task`, and no backlog would ever build to start a
worker. The worker chart runs this as a Helm hook Job after each install and upgrade. It builds each model to read
its configuration (fingerprint, input limit, streaming) without loading the weights, and never overrides live
workers' own registration.

A registration outlives its workers on purpose (a task at zero workers must stay known). A task dropped from every
worker's configuration is therefore removed explicitly: listed in `retired_tasks` (the chart's `worker.retiredTasks`)
for the Job, or named to `forget` by hand. Neither removes a task while a worker is live for it: during an upgrade the
old pods may still be draining, so both wait for them (`retire_wait_s`), and then fail (Kubernetes runs the Job
again).
"""

from __future__ import annotations

import asyncio
import time

from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, Redis, close_redis, create_redis
from rtai_transport.registry import declare_task, forget_task
from rtai_worker.models import create_model
from rtai_worker.models.options import ModelOptions
from rtai_worker.run import task_info
from rtai_worker.settings import WorkerSettings

log = get_logger("rtai_worker.declare")

RETIRE_POLL_S = 2.0
"""How often a task still served is asked about again while `retire_wait_s` runs."""


async def declare(settings: WorkerSettings) -> bool:
    """Declare the configured tasks and forget the retired ones; False if a retired task is still served."""
    options = ModelOptions(device=settings.device, cache_dir=settings.model_cache_dir)
    infos = [task_info(task, spec, create_model(spec, options)) for task, spec in settings.task_models().items()]
    redis = create_redis(settings.redis)
    try:
        keys = Keys(settings.redis.prefix)
        for info in infos:
            declared = await declare_task(redis, keys, info)
            log.info("task.declared" if declared else "task.served", task=info.task, fingerprint=info.fingerprint)
        return await _forget(redis, keys, settings.retired(), settings.retire_wait_s)
    finally:
        await close_redis(redis)


async def forget(settings: WorkerSettings, tasks: list[str]) -> bool:
    """Remove these tasks from the registry; False if a live worker still serves one after `retire_wait_s` (that one
    is left alone)."""
    redis = create_redis(settings.redis)
    try:
        return await _forget(redis, Keys(settings.redis.prefix), tasks, settings.retire_wait_s)
    finally:
        await close_redis(redis)


async def _forget(redis: Redis, keys: Keys, tasks: list[str], wait_s: float) -> bool:
    done = True
    deadline = time.monotonic() + wait_s
    for task in tasks:
        outcome = await forget_task(redis, keys, task)
        if outcome == "served" and time.monotonic() < deadline:
            log.info("task.waiting_for_workers", task=task, wait_s=round(deadline - time.monotonic(), 1))
            while outcome == "served" and time.monotonic() < deadline:
                await asyncio.sleep(min(RETIRE_POLL_S, max(deadline - time.monotonic(), 0.0)))
                outcome = await forget_task(redis, keys, task)
        if outcome == "served":
            done = False
            log.error("task.still_served", task=task, hint="stop its workers first; run again once they are gone")
        else:
            # Jobs still queued stay in the stream: their clients get `deadline_exceeded` from their gateways.
            log.info("task.forgotten" if outcome == "forgotten" else "task.not_registered", task=task,
                     queued=int(await redis.xlen(keys.jobs(task))))  # fmt: skip
    return done
