"""Plain jobs run in batches: one model call per batch (or per micro-batch of similar lengths), replies and acks
written while the next batch is read."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link

from rtai_protocol import Reply, now_ms
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import extract_context, tracing_enabled
from rtai_worker.consumer import Consumer, Delivery
from rtai_worker.engine import Model, ModelInput
from rtai_worker.job_io import JobIO
from rtai_worker.model_threads import ModelCallHung, ModelThreads
from rtai_worker.models.microbatch import cut_by_length
from rtai_worker.running_jobs import RunningJobs

log = get_logger("rtai_worker.task")
tracer = trace.get_tracer("rtai_worker")


class Batches:
    """A task's plain jobs, run batch after batch by its read loop. A job is in `running` from its model call until
    its reply and ack are written (claim kept fresh, handed back at shutdown)."""

    def __init__(
        self, model: Model, threads: ModelThreads, consumer: Consumer, io: JobIO, running: RunningJobs
    ) -> None:
        self.model = model
        self.threads = threads
        self.consumer = consumer
        self.io = io
        self.metrics = io.metrics
        self.task = io.task
        self.running = running
        self._replying: asyncio.Task[None] | None = None
        """The last batch's replies and acks, still being written while the next batch is read."""

    async def run(self, batch: list[Delivery]) -> None:
        for d in batch:
            self.running.add(d)
        try:
            replies = await self._replies(batch)
        except ModelCallHung:
            self.running.hung.update(d.entry_id for d in batch)
            raise  # the jobs stay in `running`, and the worker hands them back on its way out
        except asyncio.CancelledError:
            raise  # cut off at shutdown: the same
        except BaseException:
            for d in batch:
                self.running.release(d)
            raise
        await self._reply_and_ack(replies)

    async def _replies(self, batch: list[Delivery]) -> list[tuple[Delivery, Reply | None]]:
        traced = tracing_enabled()
        links = (
            [Link(trace.get_current_span(extract_context(d.job.headers)).get_span_context()) for d in batch]
            if traced
            else []
        )
        started_ns = time.time_ns()
        timing: list[tuple[int, int]] = [(started_ns, started_ns)] * len(batch)
        outputs: list[Any] = [None] * len(batch)
        with tracer.start_as_current_span(
            "worker.batch", links=links, attributes={"rtai.task": self.task, "rtai.batch_size": len(batch)}
        ) as batch_span:
            inputs = [self.io.model_input(d.job) for d in batch]
            groups = self._groups(inputs)
            for group in groups:
                t0 = time.time_ns()
                results = await self._predict([inputs[i] for i in group])
                t1 = time.time_ns()
                for i, out in zip(group, results, strict=True):
                    outputs[i] = out
                    timing[i] = (t0, t1)
        if not traced:
            return [(d, self.io.answer(d.job, out)) for d, out in zip(batch, outputs, strict=True)]
        batch_link = [Link(batch_span.get_span_context())]
        replies: list[tuple[Delivery, Reply | None]] = []
        for d, out, (t0, t1) in zip(batch, outputs, timing, strict=True):
            # One trace per request: its own worker.job span (from the batch's start) with the inference it
            # shared as a child, linked to the batch span that ran it.
            job_span = tracer.start_span(
                "worker.job",
                context=extract_context(d.job.headers),
                start_time=started_ns,
                attributes={"rtai.request_id": d.job.request_id, "rtai.task": self.task},
            )
            with trace.use_span(job_span, end_on_exit=True):
                infer = tracer.start_span("worker.infer", start_time=t0, links=batch_link)
                infer.end(end_time=t1)
                replies.append((d, self.io.answer(d.job, out)))
        return replies

    async def _reply_and_ack(self, replies: list[tuple[Delivery, Reply | None]]) -> None:
        """Write a batch's replies and acks without waiting for Redis to answer: the next batch's read overlaps that
        round trip. At most two batches are being written at once (this one and the one before, which it waits
        for); a failed write raises here, one batch later, and the serve loop backs off as for any Redis error.
        Until its write is done a job stays in `running`, so its claim is kept fresh and a shutdown hands it back."""
        previous, self._replying = self._replying, asyncio.create_task(self._finish(replies), name="reply-and-ack")
        if previous is not None:
            await previous

    async def _finish(self, replies: list[tuple[Delivery, Reply | None]]) -> None:
        try:
            await self.consumer.finish(replies)
        except asyncio.CancelledError:
            raise  # cut off at shutdown: the jobs stay in `running`, and the worker hands them back on its way out
        except BaseException:
            self._release_all(replies)
            raise
        self.io.count_answered(r for _, r in replies)
        self._release_all(replies)

    def _release_all(self, replies: list[tuple[Delivery, Reply | None]]) -> None:
        for d, _ in replies:
            self.running.release(d)

    async def written(self) -> None:
        """Wait for the last batch's replies and acks (a failure was logged; the jobs stay pending and are
        reclaimed)."""
        task, self._replying = self._replying, None
        if task is not None:
            try:
                await task
            except Exception as e:
                log.warning("reply.failed", task=self.task, error=type(e).__name__)

    def _groups(self, inputs: list[ModelInput]) -> list[list[int]]:
        """The batch cut into model calls of similar lengths (for models that pad), else one call."""
        if not self.model.info.pads:
            return [list(range(len(inputs)))]
        try:
            keys = [self.model.sort_key(i) for i in inputs]
        except Exception:
            # Only an optimisation: a model whose sort key fails still gets its batch, in one call.
            log.exception("model.sort_key_failed", task=self.task)
            return [list(range(len(inputs)))]
        return cut_by_length(keys)

    async def _predict(self, inputs: list[ModelInput]) -> list[Any]:
        m = self.metrics
        m.batch_size.labels(self.task).observe(len(inputs))
        started = time.perf_counter()
        try:
            with m.model_call():
                outputs = await self._call_predict(inputs)
            if len(outputs) != len(inputs):
                # Matched up later, a short list would fail the whole batch outside this guard: it would be re-run
                # and dead-lettered instead of answered.
                raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(inputs)} inputs")
            return outputs
        except ModelCallHung:
            raise  # not the requests' fault as far as anyone knows: they are handed back, not answered
        except Exception as e:
            # One bad batch must not take the others down: every request in it gets `internal`, logged here.
            log.exception("model.failed", task=self.task, batch=len(inputs))
            return [e] * len(inputs)
        finally:
            m.inference.labels(self.task).observe(time.perf_counter() - started)

    async def _call_predict(self, inputs: list[ModelInput]) -> list[Any]:
        if self.model.info.inline:
            return self.model.predict(inputs)
        # A batch may run to its requests' deadlines (a generator answers each by its own): only past the last of them
        # is a call taken as hung.
        until_last_deadline_s = (max(i.options["deadline_ms"] for i in inputs) - now_ms()) / 1000
        return await self.threads.run_until(until_last_deadline_s, self.model.predict, inputs)
