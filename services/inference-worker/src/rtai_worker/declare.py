"""`python -m rtai_worker declare`: record this worker's tasks in the registry without serving them.

A task becomes known to the gateways when a worker registers it, which happens only once that worker has loaded its
model. Where workers scale to zero, a task whose workers have never run (a new deployment, a task added while its
workers are at zero) would be unknown, its requests refused `unknown_task`, and no backlog would ever build to start a
worker. The worker chart runs this as a Helm hook Job after each install and upgrade. It builds each model to read
its configuration (fingerprint, input limit, streaming) without loading the weights, and never overrides live
workers' own registration.
"""

from __future__ import annotations

from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, close_redis, create_redis
from rtai_transport.registry import declare_task
from rtai_worker.models import create_model
from rtai_worker.models.options import ModelOptions
from rtai_worker.run import task_info
from rtai_worker.settings import WorkerSettings

log = get_logger("rtai_worker.declare")


async def declare(settings: WorkerSettings) -> None:
    options = ModelOptions(device=settings.device, cache_dir=settings.model_cache_dir)
    infos = [task_info(task, spec, create_model(spec, options)) for task, spec in settings.task_models().items()]
    redis = create_redis(settings.redis)
    try:
        keys = Keys(settings.redis.prefix)
        for info in infos:
            declared = await declare_task(redis, keys, info)
            log.info("task.declared" if declared else "task.served", task=info.task, fingerprint=info.fingerprint)
    finally:
        await close_redis(redis)
