"""The streams a task server runs at once: each job in an asyncio task of its own, up to `max_streams`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from opentelemetry import trace

from rtai_protocol import ErrorCode, Reply, now_ms
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import extract_context
from rtai_worker.consumer import Consumer, Delivery
from rtai_worker.generation import Generation, TakenOver
from rtai_worker.model_threads import ModelCallHung

log = get_logger("rtai_worker.task")
tracer = trace.get_tracer("rtai_worker")


class Streams:
    """Running streams. A reclaimed stream runs alone (`solo`): it may be what killed the worker that had it, and run
    beside others it would take them down with it again."""

    def __init__(
        self, max_streams: int, generation: Generation, consumer: Consumer, on_solo_done: Callable[[], None]
    ) -> None:
        self.max_streams = max_streams
        self.generation = generation
        self.consumer = consumer
        self.running = generation.running
        self.io = generation.io
        self._on_solo_done = on_solo_done
        self._slots = asyncio.Semaphore(max_streams)
        self.tasks: set[asyncio.Task[None]] = set()
        self._solo: asyncio.Task[None] | None = None

    @property
    def full(self) -> bool:
        return len(self.tasks) >= self.max_streams

    @property
    def solo_running(self) -> bool:
        return self._solo is not None and not self._solo.done()

    @property
    def free(self) -> int:
        return self.max_streams - len(self.tasks)

    def start(self, d: Delivery, *, solo: bool = False) -> None:
        self.running.add(d)
        task = asyncio.create_task(self.run(d), name=f"stream-{d.job.job_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if solo:
            self._solo = task
            task.add_done_callback(self._solo_done)

    def _solo_done(self, task: asyncio.Task[None]) -> None:
        if self._solo is task:
            self._solo = None
            self._on_solo_done()  # the next reclaimed stream may start

    async def wait_for_slot(self, interrupted: Callable[[], bool]) -> None:
        """Until fewer than `max_streams` streams run and no reclaimed stream runs alone, or `interrupted()`."""
        while not interrupted() and (self.full or self.solo_running):
            await asyncio.wait(set(self.tasks), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)

    async def wait_all(self, interrupted: Callable[[], bool]) -> None:
        """Until no stream runs, or `interrupted()`."""
        while self.tasks and not interrupted():
            await asyncio.wait(set(self.tasks), timeout=0.5)

    async def drain(self, timeout_s: float) -> None:
        if self.tasks and timeout_s > 0:
            await asyncio.wait(self.tasks, timeout=timeout_s)

    def cancel(self) -> None:
        for t in self.tasks:
            t.cancel()

    async def run(self, d: Delivery) -> None:
        job, io = d.job, self.io
        async with self._slots:
            try:
                reply: Reply | None
                if job.deadline_ms <= now_ms():  # it waited for a slot past its deadline: answer, don't run
                    reply = io.error(job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before a slot was free")
                else:
                    with tracer.start_as_current_span(
                        "worker.job",
                        context=extract_context(job.headers),
                        attributes={"rtai.request_id": job.request_id, "rtai.stream": job.stream},
                    ):
                        reply = await self.generation.run(d)
                await self.consumer.finish([(d, reply)])
                io.count_answered([reply])
            except TakenOver:
                pass  # neither answered nor acked here: the worker that reclaimed it does both
            except asyncio.CancelledError:
                raise  # cut off at shutdown: the job stays in `running`, and the worker hands it back on its way out
            except ModelCallHung:
                self.running.hung.add(d.entry_id)
                return  # the same, as the worker leaves because of it
            except Exception:
                log.exception("stream.failed", task=io.task)
                # Left pending: another worker (or this one) reclaims it, and the delivery limit ends a poison job.
            self.running.release(d)
