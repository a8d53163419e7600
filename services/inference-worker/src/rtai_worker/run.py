"""The worker process: load models, register tasks, serve them, and drain on SIGTERM.

Loops are kept apart (one TaskServer per task, plus reclaim, heartbeat and cancel listeners) and owned by this
module's `Worker.run`, which cancels them all in order on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from rtai_protocol import ErrorCode
from rtai_telemetry.heap import prepare_heap_for_serving
from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, Redis, TaskConfigConflict, close_redis, connection_name, create_redis
from rtai_transport.backlog import read_backlogs
from rtai_transport.cancel import stop_if_cancelled
from rtai_transport.health import read_health, round_trip
from rtai_transport.registry import TaskInfo, deregister_task, live_tasks, register_task
from rtai_worker.cancels import listen_cancels
from rtai_worker.consumer import HANDED_BACK_IDLE_MS, Consumer
from rtai_worker.engine import Model
from rtai_worker.health import HealthServer
from rtai_worker.metrics import WorkerMetrics
from rtai_worker.model_threads import ModelCallHung
from rtai_worker.models import create_model
from rtai_worker.models.options import ModelOptions
from rtai_worker.settings import WorkerSettings
from rtai_worker.task_server import TaskServer

log = get_logger("rtai_worker.run")

GONE_CONSUMER_IDLE_MS = 60 * 60 * 1000
"""A consumer with nothing pending that has not read for this long belongs to a worker that is gone (a live one reads
every 0.5 s at least, or holds pending jobs while it runs them)."""
PRUNE_EVERY_S = 60.0


def task_info(task: str, spec: str, model: Model) -> TaskInfo:
    """What the registry says of a task served by `model` (built from `spec`): gateways check requests against it."""
    info = model.info
    return TaskInfo(
        task=task,
        model=spec,
        fingerprint=info.fingerprint,
        max_input_chars=info.max_input_chars,
        streaming=info.streaming,
        device=info.device,
    )


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis.prefix)
        self.metrics = WorkerMetrics()
        wid = settings.worker_id
        self.redis: Redis = create_redis(settings.redis, name=connection_name("rtai-worker", wid, "commands"))
        # Blocking reads get a client that does not retry: the read loops back off and retry themselves, and pick
        # up a newly promoted master at once instead of sitting in redis-py's nested connect retries.
        self.reader: Redis = create_redis(
            settings.redis, block_timeout_s=1.0, retries=0, name=connection_name("rtai-worker", wid, "reader")
        )
        self.probe: Redis = create_redis(settings.redis, retries=0, name=connection_name("rtai-worker", wid, "probe"))
        self.servers: dict[str, TaskServer] = {}
        self.infos: dict[str, TaskInfo] = {}
        self.registered = False
        self.redis_ok = False
        self.stopping = asyncio.Event()
        self.conflict: TaskConfigConflict | None = None
        """Set when a heartbeat found the task taken by another model configuration: `run` raises it once drained."""
        self.hung: ModelCallHung | None = None
        """Set when a model call ran past `model_call_timeout_s`: `run` raises it once drained."""
        self._reclaim_wanted = asyncio.Event()
        """A task server ran all the jobs it adopted: the reclaim loop runs again now, not after its interval."""
        self._next_prune = 0.0
        """When the reclaim loop next removes gone consumers from the task groups (`Consumer.prune_consumers`)."""
        self.health = HealthServer(settings.http_host, settings.http_port, self.metrics, self._not_ready)

    def _not_ready(self) -> list[str]:
        problems = []
        if not self.registered:
            problems.append("models loading or tasks not registered")
        if not self.redis_ok:
            problems.append("redis unreachable")
        if self.stopping.is_set():
            problems.append("stopping")
        return problems

    async def load(self) -> None:
        """Build, load and warm every model before registering anything: a listed task answers at full speed."""
        options = ModelOptions(device=self.settings.device, cache_dir=self.settings.model_cache_dir)
        for task, spec in self.settings.task_models().items():
            model: Model = create_model(spec, options)
            await asyncio.to_thread(model.load)
            await asyncio.to_thread(model.warmup)
            self.infos[task] = task_info(task, spec, model)
            consumer = Consumer(
                self.redis,
                self.keys,
                task,
                self.settings.worker_id,
                reader=self.reader,
                max_reply_bytes=self.settings.max_reply_bytes,
            )
            self.servers[task] = TaskServer(task, model, consumer, self.settings, self.metrics, self._model_hung)
            self.servers[task].wants_reclaim = self._reclaim_wanted
            self.metrics.init_task(task)
            log.info("model.loaded", task=task, model=spec, fingerprint=model.info.fingerprint)

    async def register(self) -> None:
        for info in self.infos.values():
            await register_task(self.redis, self.keys, info, self.settings.worker_id, self.settings.registration_ttl_s)
        self.registered = True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.health.start()
        log.info(
            "worker.starting",
            worker=self.settings.worker_id,
            tasks=self.settings.tasks,
            redis=self.settings.redis.describe(),
            http_port=self.health.port,
        )
        try:
            await self.load()
            await self._wait_for_redis()
            await self.register()
            await self._serve_until_stopped()
        finally:
            await self._shutdown()
        if self.conflict is not None:
            raise self.conflict
        if self.hung is not None:
            raise self.hung

    def _model_hung(self, e: ModelCallHung) -> None:
        """A model call hung. Its thread cannot be stopped, and the worker would keep the claims of its jobs fresh for
        ever while its task served nothing: drain, hand those jobs back (another worker reclaims them at once; one
        that hangs every worker ends in the dead letters after `max_deliveries`) and exit for a restart."""
        if self.stopping.is_set() and self.hung is None:
            # Already draining (SIGTERM): a call cut off now is handed back as any other; a routine stop stays one.
            log.warning("model.call_hung", reason=str(e), detail="during the drain: handed back with the rest")
            return
        if self.hung is None:
            log.error("model.call_hung", reason=str(e), detail="draining, handing its jobs back, then exiting")
            self.hung = e
        self.stopping.set()

    async def _wait_for_redis(self) -> None:
        while not self.stopping.is_set():
            try:
                await round_trip(self.probe, self.keys)
                self.redis_ok = True
                return
            except Exception as e:
                log.warning("redis.waiting", error=type(e).__name__)
                await asyncio.sleep(1)

    async def _serve_until_stopped(self) -> None:
        for server in self.servers.values():
            try:  # before the reclaim loop starts, where Redis allows; else each task's serve loop makes it, retrying
                await server.consumer.ensure_group()
            except Exception as e:
                log.warning("group.not_created", task=server.task, error=type(e).__name__)
        background = [
            asyncio.create_task(self._every(self.settings.registration_ttl_s / 4, self._heartbeat), name="heartbeat"),
            asyncio.create_task(
                self._every(self.settings.reclaim_idle_ms / 2000, self._reclaim, self._reclaim_wanted), name="reclaim"
            ),
            # Well inside the reclaim idle time: a long generation must never look abandoned.
            asyncio.create_task(self._every(self.settings.reclaim_idle_ms / 3000, self._keep_claims), name="claims"),
            asyncio.create_task(self._listen_cancels(), name="cancels"),
        ]
        frozen = prepare_heap_for_serving()  # models are loaded: their objects too stay out of full collections
        serving = [asyncio.create_task(s.serve(), name=f"serve-{t}") for t, s in self.servers.items()]
        log.info("worker.ready", tasks=list(self.servers), frozen_objects=frozen)
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait([stop, *serving], return_when=asyncio.FIRST_COMPLETED)
        for t in serving:
            if t.done() and t.exception() is not None:
                log.error("serve.crashed", error=repr(t.exception()))
        log.info("worker.draining", grace_s=self.settings.shutdown_grace_s)
        for s in self.servers.values():
            s.stopping.set()
        # The read loops finish their current batch (a blocking read ends within 0.5 s) and the streams run on, all
        # within one grace period: the orchestrator's termination grace is sized for it (the chart checks).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        _, late = await asyncio.wait(serving, timeout=self.settings.shutdown_grace_s)
        for s in self.servers.values():
            await s.streams.drain(deadline - loop.time())
        for t in [*late, *background]:
            t.cancel()
        await asyncio.gather(*late, *background, return_exceptions=True)

    async def _shutdown(self) -> None:
        for task, server in self.servers.items():
            unfinished = server.running.unfinished()  # before the cancelled streams run their way out
            server.streams.cancel()
            with contextlib.suppress(Exception):
                await deregister_task(self.redis, self.keys, task, self.settings.worker_id)
            if unfinished:
                with contextlib.suppress(Exception):
                    await server.consumer.hand_back(unfinished, HANDED_BACK_IDLE_MS)
                log.info("worker.handed_back", task=task, jobs=len(unfinished))
            with contextlib.suppress(Exception):
                # Leaves the group unless jobs are pending for it (handed back: the worker that takes them over
                # leaves it with nothing pending, and a later prune removes it).
                await server.consumer.prune_consumers(GONE_CONSUMER_IDLE_MS, including_self=True)
        await self.health.stop()
        await close_redis(self.probe)
        await close_redis(self.reader)
        await close_redis(self.redis)
        log.info("worker.stopped")

    def model_calls_running(self) -> int:
        """Model calls still computing in their threads after the drain (their jobs were handed back)."""
        return sum(server.threads.running() for server in self.servers.values())

    async def _every(self, interval_s: float, step: object, sooner: asyncio.Event | None = None) -> None:
        """Run `step` every `interval_s`, or as soon as `sooner` is set."""
        while True:
            try:
                await step()  # type: ignore[operator]
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("loop.failed", loop=getattr(step, "__name__", "?"), error=type(e).__name__)
            stop_if_cancelled()  # the shutdown waits for this task: a swallowed cancel held it until killed
            if sooner is None:
                await asyncio.sleep(interval_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sooner.wait(), interval_s)
            sooner.clear()

    async def _heartbeat(self) -> None:
        try:
            health = await read_health(self.probe)
            self.redis_ok = True
        except Exception:
            self.redis_ok = False
            self.metrics.redis.set_down()
            raise
        self.metrics.redis.set_health(
            role=health.role,
            used_memory=health.used_memory_bytes,
            clients=health.connected_clients,
            lag=health.replication_lag_bytes,
        )
        if not self.stopping.is_set():
            try:
                await self.register()
            except TaskConfigConflict as e:
                # This worker's registration lapsed (it could not heartbeat: a long pause, a partition) and workers
                # with another model took the task meanwhile. Serving on would answer one task with two models: drain
                # and exit as a worker refused at start does, so the orchestrator shows it.
                log.error("task.config_conflict", reason=str(e))
                self.registered = False
                self.conflict = e
                self.stopping.set()
                return
        live = await live_tasks(self.redis, self.keys)
        for task, b in (await read_backlogs(self.redis, self.keys, self.servers)).items():
            workers = live[task][1] if task in live else 0
            self.metrics.backlog.set(
                task, length=b.waiting, pending=b.pending, oldest_age_s=b.oldest_age_s, workers=workers
            )

    async def _keep_claims(self) -> None:
        for server in self.servers.values():
            server.lost_claims(await server.consumer.keep_claimed(list(server.running)))

    async def _prune(self, task: str, server: TaskServer) -> None:
        try:
            dropped = await server.consumer.prune_consumers(GONE_CONSUMER_IDLE_MS)
        except Exception as e:  # housekeeping (an ACL from before it, say): never at the reclaim's cost
            log.warning("consumers.prune_failed", task=task, error=type(e).__name__)
            return
        if dropped:
            log.info("consumers.pruned", task=task, count=dropped)

    async def _reclaim(self) -> None:
        prune = time.monotonic() >= self._next_prune
        if prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
        for task, server in self.servers.items():
            if server.stopping.is_set():
                continue
            if prune:
                await self._prune(task, server)
            budget = server.reclaim_budget()
            if not budget:
                continue  # adopted jobs still wait here: the other workers take what is left
            claimed = await server.consumer.reclaim(self.settings.reclaim_idle_ms, count=budget)
            # After a long pause (GC, SIGSTOP) our own running jobs look idle: they are ours, running, not lost.
            own = [d for d in claimed if d.entry_id in server.running]
            claimed = [d for d in claimed if d.entry_id not in server.running]
            if claimed:
                log.info("jobs.reclaimed", task=task, count=len(claimed))
                # Adopted first: a failed write below must not leave the others claimed and unrun.
                await server.adopt([d for d in claimed if d.deliveries <= self.settings.max_deliveries])
            if own:
                # The claim counted a delivery for each; they were delivered once, so the count is set back.
                try:
                    await server.consumer.count_deliveries([(d.entry_id, d.deliveries - 1) for d in own])
                except Exception as e:  # only over-charges them by one
                    log.warning("reclaim.count_failed", task=task, error=type(e).__name__)
            poisoned = [d for d in claimed if d.deliveries > self.settings.max_deliveries]
            for d in poisoned:
                msg = f"job failed {d.deliveries} times; moved to the dead-letter stream"
                reply = server.io.error(d.job, ErrorCode.FAILED, msg)
                await server.consumer.dead_letter(d, reply)
                self.metrics.dead_lettered.labels(task).inc()
                self.metrics.jobs.labels(task, "dead_lettered").inc()

    async def _listen_cancels(self) -> None:
        await listen_cancels(self.redis, self.keys.cancel_channel, self._note_cancel)

    def _note_cancel(self, job_id: str) -> None:
        for server in self.servers.values():
            server.running.cancel(job_id)
