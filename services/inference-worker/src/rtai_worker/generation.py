"""Running one job through a streaming model, a step at a time, checking between steps whether to go on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from rtai_protocol import ErrorCode, Reply, now_ms
from rtai_telemetry.logging import get_logger
from rtai_worker.consumer import Consumer, Delivery
from rtai_worker.engine import Model, ModelError, ModelInput
from rtai_worker.job_io import JobIO
from rtai_worker.model_threads import ModelCallHung, ModelThreads
from rtai_worker.running_jobs import RunningJobs

log = get_logger("rtai_worker.task")

CANCEL_POLL_S = 0.5
"""A running stream re-reads its cancel key this often, in case the Pub/Sub wake-up was missed."""


class TakenOver(Exception):
    """Another worker reclaimed this stream while this one was paused, and runs it now: stop, answer nothing, ack
    nothing (an ack without the final answer could lose the job if that worker dies too)."""


def _advance(gen: Iterator[Any]) -> tuple[bool, Any]:
    """One step of a model's stream: (False, chunk), or (True, the generator's return value) at its end."""
    try:
        return False, next(gen)
    except StopIteration as stop:
        return True, stop.value


class _Steps:
    """A model's stream for one job, advanced one step per call (in a model thread). The iterator is made by the first
    step, so a plugin whose `stream` raises when called, not only when advanced, is answered as a failed step is
    (before, the job was left pending, unanswered, until dead-lettered as poison)."""

    __slots__ = ("_item", "_model", "gen")

    def __init__(self, model: Model, item: ModelInput) -> None:
        self._model = model
        self._item = item
        self.gen: Iterator[Any] | None = None

    def step(self) -> tuple[bool, Any]:
        if self.gen is None:
            self.gen = iter(self._model.stream(self._item))
        return _advance(self.gen)


class Generation:
    """Runs jobs through a streaming model's `stream`, one step per model-thread call, so a cancel, a takeover or a
    passed deadline stops a job within one step."""

    __slots__ = ("consumer", "io", "model", "running", "threads")

    def __init__(
        self, model: Model, threads: ModelThreads, consumer: Consumer, io: JobIO, running: RunningJobs
    ) -> None:
        self.model = model
        self.threads = threads
        self.consumer = consumer
        self.io = io
        self.running = running

    async def run(self, d: Delivery) -> Reply | None:
        """Run one job's generation, checking for a cancel, a takeover and its deadline between steps. A streamed job
        gets each chunk as it comes; a plain one (`stream: false`) only the result. None: cancelled (the gateway
        already answered)."""
        job, io = d.job, self.io
        steps = _Steps(self.model, io.model_input(job))
        chunks: list[Any] = []  # a plain job's
        index = 0
        last_check = time.monotonic()
        started = time.perf_counter()
        try:
            with io.metrics.model_call():
                while True:
                    step = await self._step(steps, d)
                    if isinstance(step, Reply):
                        return step  # the model failed
                    finished, value = step
                    if finished:
                        break
                    if time.monotonic() - last_check > CANCEL_POLL_S:
                        last_check = time.monotonic()
                        if await self.consumer.cancelled_if_known([job]):  # not known: the next poll asks again
                            self.running.cancelled.add(job.job_id)
                    if job.job_id in self.running.cancelled:
                        return None
                    if d.entry_id in self.running.taken_over:
                        raise TakenOver
                    if job.deadline_ms <= now_ms():
                        return io.error(job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed during generation")
                    if job.stream:
                        await self.consumer.send(job, io.reply(job, "chunk", data=value, index=index))
                    else:
                        chunks.append(value)
                    index += 1
        finally:
            await self._close(steps)
            io.metrics.inference.labels(io.task).observe(time.perf_counter() - started)
        # The generator's return value is the result. For a model that returns nothing: the chunk count for a stream
        # (its client has the chunks), the list of chunks for a plain job.
        if value is not None:
            return io.reply(job, "result", data=value)
        return io.reply(job, "result", data={"chunks": index} if job.stream else chunks)

    async def _step(self, steps: _Steps, d: Delivery) -> tuple[bool, Any] | Reply:
        """One step of a job's stream, or the answer to its failure."""
        try:
            return await self.threads.run(steps.step)
        except ModelCallHung:
            raise
        except ModelError as e:
            return self.io.error(d.job, ErrorCode.INVALID_REQUEST, str(e))
        except Exception:
            # Answered at once, as a failed plain batch is: left pending, the client would hear nothing until the job
            # had been regenerated and failed on three reclaims.
            log.exception("model.stream_failed", task=self.io.task)
            return self.io.error(d.job, ErrorCode.INTERNAL, "the model failed on this request")

    async def _close(self, steps: _Steps) -> None:
        # A step cut off at shutdown may still run in its thread, and closing the generator then would raise; it is
        # dropped with the process.
        close = getattr(steps.gen, "close", None)  # a plugin's `stream` may return any iterator
        if close is not None and not getattr(steps.gen, "gi_running", False):
            await self.threads.run(close)
