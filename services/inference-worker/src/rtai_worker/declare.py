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
old pods may still be draining, so the Job fails and Kubernetes runs it again until they are gone.
"""

from __future__ import annotations

from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, Redis, close_redis, create_redis
from rtai_transport.registry import declare_task, forget_task
from rtai_worker.models import create_model
from rtai_worker.models.options import ModelOptions
from rtai_worker.run import task_info
from rtai_worker.settings import WorkerSettings

log = get_logger("rtai_worker.declare")


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
        return await _forget(redis, keys, settings.retired())
    finally:
        await close_redis(redis)


async def forget(settings: WorkerSettings, tasks: list[str]) -> bool:
    """Remove these tasks from the registry; False if any is still served by a live worker (it is left alone)."""
    redis = create_redis(settings.redis)
    try:
        return await _forget(redis, Keys(settings.redis.prefix), tasks)
    finally:
        await close_redis(redis)


async def _forget(redis: Redis, keys: Keys, tasks: list[str]) -> bool:
    done = True
    for task in tasks:
        outcome = await forget_task(redis, keys, task)
        if outcome == "served":
            done = False
            log.error("task.still_served", task=task, hint="stop its workers first; run again once they are gone")
        else:
            # Jobs still queued stay in the stream: their clients get `deadline_exceeded` from their gateways.
            log.info("task.forgotten" if outcome == "forgotten" else "task.not_registered", task=task,
                     queued=int(await redis.xlen(keys.jobs(task))))  # fmt: skip
    return done
