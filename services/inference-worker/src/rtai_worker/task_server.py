"""Serving one task: gather a batch, run the model off the event loop, reply and ack; stream generations chunk by chunk.

Model code runs in threads (`ModelThreads`) so heartbeats, claim refreshes and acks keep flowing while a batch
computes. Streaming jobs run concurrently (up to `max_streams`) and check for cancellation between chunks; a streaming
model's plain jobs run the same way, answered with the result alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.trace import Link

from rtai_protocol import ErrorCode, Job, Reply, now_ms
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import extract_context, inject_headers, trace_id_of, tracing_enabled
from rtai_worker.consumer import HANDED_BACK_IDLE_MS, Consumer, Delivery, Unreadable
from rtai_worker.engine import DeadlinePassed, Model, ModelError, ModelInput
from rtai_worker.metrics import WorkerMetrics
from rtai_worker.model_threads import ModelCallHung, ModelThreads
from rtai_worker.models.microbatch import cut_by_length
from rtai_worker.settings import WorkerSettings

RECLAIM_INLINE = 64
RECLAIM_THREADED = 4

log = get_logger("rtai_worker.task")

CANCEL_POLL_S = 0.5
"""A running stream re-reads its cancel key this often, in case the Pub/Sub wake-up was missed."""
tracer = trace.get_tracer("rtai_worker")


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


class TaskServer:
    def __init__(
        self,
        task: str,
        model: Model,
        consumer: Consumer,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        on_hung: Callable[[ModelCallHung], None],
    ) -> None:
        self.task = task
        self.model = model
        self.consumer = consumer
        self.settings = settings
        self.metrics = metrics
        self.running: dict[str, Delivery] = {}
        """Entry id -> delivery, for jobs this worker is working on (claims kept fresh, handed back at shutdown)."""
        self.cancelled_jobs: set[str] = set()
        self.hung: set[str] = set()
        """Entry ids of running jobs whose model call hung: handed back charged with the delivery (a job that hangs
        every worker must reach the dead letters)."""
        self.taken_over: set[str] = set()
        """Entry ids of running jobs that another worker reclaimed (this one was paused past `reclaim_idle_ms`)."""
        self._adopted: deque[Delivery] = deque()
        """Jobs reclaimed from dead workers, waiting for the read loop to run them (already in `running`)."""
        self.wants_reclaim: asyncio.Event | None = None
        """Set when the jobs this server adopted have all run: the worker's reclaim loop then takes more at once."""
        self._adopting = False
        """An adopted job is being run (or waits for the streams to end, to run alone)."""
        self._streams = asyncio.Semaphore(settings.max_streams)
        self._stream_tasks: set[asyncio.Task[None]] = set()
        self._solo: asyncio.Task[None] | None = None
        """A reclaimed stream, running alone (no other stream starts beside it)."""
        self._replying: asyncio.Task[None] | None = None
        """The last batch's replies and acks, still being written while the next batch is read."""
        self.stopping = asyncio.Event()
        self.threads = ModelThreads(task, settings.model_call_timeout_s, on_hung)

    # ---- the read loop -------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read and run batches until told to stop. Redis errors pause the loop; they never end it."""
        s = self.settings
        await self.consumer.ensure_group()
        failures = 0
        while not self.stopping.is_set():
            try:
                if self._adopted:
                    self._adopting = True
                    try:
                        await self._run_adopted(self._adopted.popleft())
                    finally:
                        self._adopting = False
                    if not self._adopted:
                        self._want_reclaim()
                    failures = 0
                    continue
                size = await self._read_budget(s.max_batch_size)
                if self.stopping.is_set():
                    break  # told to stop while waiting for a stream slot: a job read now could only be handed back
                if self._adopted:
                    continue  # adopted while this loop waited for a stream slot: it starts before newer jobs
                batch = await self._gather(size, s.max_batch_delay_ms)
                if batch:
                    # Replying and acking can fail too (Redis down or failing over past the client's retries): the
                    # batch then stays pending and is reclaimed and re-run, and this loop goes on.
                    await self.run(batch)
                failures = 0
            except asyncio.CancelledError:
                raise
            except ModelCallHung:
                break  # the worker is on its way out (it was told): the batch stays in `running`, to be handed back
            except Exception as e:
                failures += 1
                if failures == 1:
                    log.warning("serve.failed", task=self.task, error=type(e).__name__)
                await asyncio.sleep(min(0.05 * 2**failures, 1.0))
        await self._hand_back_adopted()
        await self.replies_written()

    async def _hand_back_adopted(self) -> None:
        """Stopping: the adopted jobs that have not started go back at once, not after the drain (up to
        `shutdown_grace_s`), so another worker runs them meanwhile. Their delivery count is the one they came with."""
        if not self._adopted:
            return
        waiting = list(self._adopted)
        self._adopted.clear()
        # Out of `running` before the hand-back is written, not after: else the claim refresher could claim them again
        # (idle 0) in between, and another worker would wait a whole reclaim interval for them.
        for d in waiting:
            self._release(d)
        try:
            await self.consumer.hand_back([(d.entry_id, d.deliveries - 1) for d in waiting], HANDED_BACK_IDLE_MS)
        except Exception as e:  # back in `running`: the worker's shutdown hands them back
            for d in waiting:
                self.running[d.entry_id] = d
            log.warning("adopted.hand_back_failed", task=self.task, error=type(e).__name__)
            return
        log.info("adopted.handed_back", task=self.task, jobs=len(waiting))

    def unfinished(self) -> list[tuple[str, int | None]]:
        """The jobs still running here, to hand back at shutdown (entry id, delivery count to set). A job the drain cut
        off gives back the delivery it was charged for this run: else a long generation cut off by a few rolling
        updates would be dead-lettered as poison. One whose model call hung keeps it."""
        return [(i, None if i in self.hung else d.deliveries - 1) for i, d in self.running.items()]

    def reclaim_budget(self) -> int:
        """How many jobs of dead workers to take over now. Adopted jobs run one at a time (`_run_adopted`), so a worker
        takes no more than it can start soon and leaves the rest pending for the other workers' reclaim: none while an
        adopted job waits or runs here, one stream once no reclaimed stream runs here (it runs alone) and a stream slot
        is free, a few jobs of a threaded model; an inline model's jobs take microseconds each."""
        if self._adopted or self._adopting:
            return 0
        if self.model.info.streaming:
            # 0 while every stream slot is taken: the job would wait here while another worker could start it.
            full = len(self._stream_tasks) >= self.settings.max_streams
            return 0 if self._solo is not None or full else 1
        return RECLAIM_INLINE if self.model.info.inline else RECLAIM_THREADED

    def _want_reclaim(self) -> None:
        if self.wants_reclaim is not None:
            self.wants_reclaim.set()

    async def adopt(self, reclaimed: list[Delivery]) -> None:
        """Take over jobs reclaimed from a worker presumed dead. The read loop runs them, ahead of new jobs, so the
        reclaim loop never waits for a model (a long reclaimed generation held up the reclaim of every other task)
        and this task's model runs one call at a time. Until then their claims are kept fresh, and a shutdown hands
        them back.

        The reclaim counted a delivery for each of them; a job counts it only when it starts (`_run_adopted`). Else
        the jobs queued behind one that crashes this worker too would be charged for a run they never had, and after
        `max_deliveries` such crashes be dead-lettered without ever running again."""
        if not reclaimed:
            return
        for d in reclaimed:  # first: whatever happens next, they are kept claimed, run or handed back
            self.running[d.entry_id] = d
            self._adopted.append(d)
        try:
            await self.consumer.count_deliveries([(d.entry_id, d.deliveries - 1) for d in reclaimed])
        except Exception as e:  # only over-charges them: the count is set again, absolutely, when each starts
            log.warning("reclaim.count_failed", task=self.task, error=type(e).__name__)

    async def _run_adopted(self, d: Delivery) -> None:
        # One at a time, with the answers before it written first: a reclaimed job may be what killed the worker that
        # had it (a crash in the model). Run in a batch, or while those answers are still being written, it would take
        # those jobs down with it again, and they too would end in the dead letters. For the same reason a reclaimed job
        # of a streaming model waits for the streams running here to end, and a reclaimed stream runs alone: no stream
        # starts beside it (and, as the read loop waits for a stream slot, no batch) until it is done.
        try:
            if self.model.info.streaming and not await self._streams_done():
                self._adopted.appendleft(d)  # stopping: handed back uncharged, with the others not started
                return
            await self.replies_written()  # the answers of the batch before: an inline model's crash would lose them
            # This run counts (see `adopt`). A job no longer pending was finished by its first owner meanwhile.
            if d.entry_id not in await self.consumer.count_deliveries([(d.entry_id, d.deliveries)]):
                self._release(d)
                return
            await self.run([d], reclaimed=True)
            await self.replies_written()
        except ModelCallHung:
            raise  # kept in `running`, to be handed back
        except Exception:
            # Left pending and no longer refreshed: reclaimed again after `reclaim_idle_ms`, as any batch whose run
            # failed; kept in `running`, its claim would be refreshed by a worker that will never run it.
            self._release(d)
            raise

    def lost_claims(self, entry_ids: set[str]) -> None:
        """Jobs of ours that another worker reclaimed while we were paused and runs now (`Consumer.keep_claimed`). Our
        claim is not taken back. A stream stops at its next chunk; a batch already in the model finishes, and its
        answer is written with its ack (the gateway keeps whichever final it logs first and drops the other)."""
        for entry_id in entry_ids:
            d = self.running.get(entry_id)
            if d is None or entry_id in self.taken_over:
                continue  # finished meanwhile, or known
            self.taken_over.add(entry_id)
            self.metrics.claims_lost.labels(self.task).inc()
            log.warning("job.taken_over", task=self.task, request_id=d.job.request_id, entry=entry_id)

    async def _stream_slot_free(self) -> bool:
        """Wait until fewer than `max_streams` streams run and no reclaimed stream runs alone, or a job is adopted (it
        goes first); False if told to stop meanwhile."""
        while (
            not self.stopping.is_set()
            and not self._adopted
            and (
                len(self._stream_tasks) >= self.settings.max_streams
                or (self._solo is not None and not self._solo.done())
            )
        ):
            await asyncio.wait(set(self._stream_tasks), timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        return not self.stopping.is_set()

    def _solo_done(self, task: asyncio.Task[None]) -> None:
        if self._solo is task:
            self._solo = None
            self._want_reclaim()  # the next reclaimed stream may start

    async def _streams_done(self) -> bool:
        """Wait until no stream runs here; False if told to stop meanwhile."""
        while self._stream_tasks and not self.stopping.is_set():
            await asyncio.wait(set(self._stream_tasks), timeout=0.5)
        return not self.stopping.is_set()

    async def _read_budget(self, size: int) -> int:
        """How many jobs to read now. A streaming model takes no more than it has free stream slots for: jobs it
        read but could not start would sit claimed here while other replicas (or new ones scaled up for the
        backlog) stay idle."""
        if not self.model.info.streaming:
            return size
        await self._stream_slot_free()
        return max(1, min(size, self.settings.max_streams - len(self._stream_tasks)))

    async def _gather(self, size: int, delay_ms: float) -> list[Delivery]:
        """Block for the first job, then wait up to `delay_ms` for more, up to `size` (dynamic batching)."""
        got, bad = await self.consumer.read(size, block_ms=500)
        # The jobs read are claimed by this worker from here on: a failure after the read must not drop them (they
        # would wait, unrun, for a reclaim, charged a delivery they never had).
        await self._reject_or_leave(bad)
        # Waiting for more only pays for models whose cost per batch grows slower than its size (transformers); for
        # a per-item model like VADER it would add the delay to every lone request and save nothing.
        if got and len(got) < size and delay_ms > 0 and self.model.info.pads:
            await asyncio.sleep(delay_ms / 1000)
            try:
                more, bad = await self.consumer.read(size - len(got), block_ms=None)
            except Exception as e:
                log.warning("read.more_failed", task=self.task, error=type(e).__name__)  # run what was read
                return got
            await self._reject_or_leave(bad)
            got.extend(more)
        return got

    async def _reject_or_leave(self, bad: list[Unreadable]) -> None:
        """Dead-letter unreadable entries; if that fails, leave them pending: the reclaim finds them again."""
        if not bad:
            return
        try:
            await self._reject(bad)
        except Exception as e:
            log.warning("reject.failed", task=self.task, entries=len(bad), error=type(e).__name__)

    async def _reject(self, bad: list[Unreadable]) -> None:
        await self.consumer.reject(bad)
        self.metrics.jobs.labels(self.task, "unreadable").inc(len(bad))

    async def run(self, batch: list[Delivery], *, reclaimed: bool = False) -> None:
        now = now_ms()
        m = self.metrics
        for d in batch:
            m.queue_wait.labels(self.task).observe(max(now - d.job.enqueued_ms, 0) / 1000)
            if reclaimed:
                m.reclaimed.labels(self.task).inc()
            if d.deliveries > 1 or d.job.attempt > 1:
                m.reruns.labels(self.task).inc()
        live, finished = await self._screen(batch, now)
        await self.consumer.finish(finished)
        self._release_all(finished)  # adopted jobs are in `running` already
        # A streaming model runs its plain jobs as streams too (each in a stream slot, checked for a cancel and its
        # deadline at every step, answered with the result only): in one `predict` call they held the read loop while
        # the whole batch generated (no stream started meanwhile), each waited for the others, and a cancel was ignored.
        as_streams = self.model.info.streaming
        streams = [d for d in live if d.job.stream or as_streams]
        plain = [d for d in live if not (d.job.stream or as_streams)]
        for d in streams:
            self.running[d.entry_id] = d
            task = asyncio.create_task(self._stream(d), name=f"stream-{d.job.job_id}")
            self._stream_tasks.add(task)
            task.add_done_callback(self._stream_tasks.discard)
            if reclaimed:
                self._solo = task
                task.add_done_callback(self._solo_done)
        if plain:
            await self._run_plain(plain)

    async def _screen(
        self, batch: list[Delivery], now: int
    ) -> tuple[list[Delivery], list[tuple[Delivery, Reply | None]]]:
        """Split off jobs that must not run: expired (answered), cancelled (the gateway already answered)."""
        # The cancel flags cost a Redis round trip per batch. A declared-cheap inline model (VADER: ~25 us) costs less
        # than that, so it runs a job cancelled in the last instant anyway: the gateway has already sent `cancelled`
        # and drops the late result as a duplicate final (LOG_FRAME). Measured: L p50 -0.3 ms, T +13% (performance.md).
        cancelled = set() if self.model.info.inline else await self.consumer.cancelled([d.job for d in batch])
        live: list[Delivery] = []
        done: list[tuple[Delivery, Reply | None]] = []
        for d in batch:
            if d.job.job_id in cancelled:
                self.metrics.jobs.labels(self.task, "cancelled").inc()
                done.append((d, None))
            elif d.job.deadline_ms <= now:
                self.metrics.jobs.labels(self.task, "expired").inc()
                done.append(
                    (
                        d,
                        self.error_reply(
                            d.job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before a worker could run it"
                        ),
                    )
                )
            else:
                live.append(d)
        return live, done

    # ---- plain (batched) jobs ------------------------------------------------------------------------------------

    async def _run_plain(self, batch: list[Delivery]) -> None:
        for d in batch:
            self.running[d.entry_id] = d
        try:
            replies = await self._replies(batch)
        except ModelCallHung:
            self.hung.update(d.entry_id for d in batch)
            raise  # the jobs stay in `running`, and the worker hands them back on its way out
        except asyncio.CancelledError:
            raise  # cut off at shutdown: the same
        except BaseException:
            for d in batch:
                self._release(d)
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
            inputs = [self._input(d.job) for d in batch]
            groups = self._groups(inputs)
            for group in groups:
                t0 = time.time_ns()
                results = await self._predict([inputs[i] for i in group])
                t1 = time.time_ns()
                for i, out in zip(group, results, strict=True):
                    outputs[i] = out
                    timing[i] = (t0, t1)
        if not traced:
            return [(d, self._reply_for(d.job, out)) for d, out in zip(batch, outputs, strict=True)]
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
                replies.append((d, self._reply_for(d.job, out)))
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
        self._release_all(replies)

    def _release_all(self, replies: list[tuple[Delivery, Reply | None]]) -> None:
        for d, _ in replies:
            self._release(d)

    def _release(self, d: Delivery) -> None:
        """A job is no longer being run here (answered, or handed back to be reclaimed)."""
        self.running.pop(d.entry_id, None)
        self.cancelled_jobs.discard(d.job.job_id)
        self.taken_over.discard(d.entry_id)
        self.hung.discard(d.entry_id)

    async def replies_written(self) -> None:
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

    def _reply_for(self, job: Job, out: Any) -> Reply:
        if isinstance(out, DeadlinePassed):
            self.metrics.jobs.labels(self.task, "expired").inc()
            return self.error_reply(job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed while the model ran it")
        if isinstance(out, ModelError):
            self.metrics.jobs.labels(self.task, "error").inc()
            return self.error_reply(job, ErrorCode.INVALID_REQUEST, str(out))
        if isinstance(out, Exception):
            self.metrics.jobs.labels(self.task, "error").inc()
            return self.error_reply(job, ErrorCode.INTERNAL, "the model failed on this request")
        self.metrics.jobs.labels(self.task, "ok").inc()
        log.debug("job.done", request_id=job.request_id, task=self.task, trace_id=trace_id_of(job.headers))
        return self._reply(job, "result", data=out)

    # ---- streaming jobs ------------------------------------------------------------------------------------------

    async def _stream(self, d: Delivery) -> None:
        job = d.job
        async with self._streams:
            try:
                reply: Reply | None
                if job.deadline_ms <= now_ms():  # it waited for a slot past its deadline: answer, don't run
                    self.metrics.jobs.labels(self.task, "expired").inc()
                    reply = self.error_reply(job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before a slot was free")
                else:
                    with tracer.start_as_current_span(
                        "worker.job",
                        context=extract_context(job.headers),
                        attributes={"rtai.request_id": job.request_id, "rtai.stream": job.stream},
                    ):
                        reply = await self._generate(d)
                await self.consumer.finish([(d, reply)])
            except TakenOver:
                pass  # neither answered nor acked here: the worker that reclaimed it does both
            except asyncio.CancelledError:
                raise  # cut off at shutdown: the job stays in `running`, and the worker hands it back on its way out
            except ModelCallHung:
                self.hung.add(d.entry_id)
                return  # the same, as the worker leaves because of it
            except Exception:
                log.exception("stream.failed", task=self.task)
                # Left pending: another worker (or this one) reclaims it, and the delivery limit ends a poison job.
            self._release(d)

    async def _generate(self, d: Delivery) -> Reply | None:
        """Run one job's generation step by step, checking for a cancel, a takeover and its deadline between steps.
        A streamed job gets each chunk as it comes; a plain one (`stream: false`) only the result."""
        job = d.job
        steps = _Steps(self.model, self._input(job))
        chunks: list[Any] = []  # a plain job's
        index = 0
        last_check = time.monotonic()
        started = time.perf_counter()
        try:
            with self.metrics.model_call():
                while True:
                    step = await self._step(steps, job)
                    if isinstance(step, Reply):
                        return step  # the model failed
                    finished, value = step
                    if finished:
                        break
                    if time.monotonic() - last_check > CANCEL_POLL_S:
                        last_check = time.monotonic()
                        if await self.consumer.cancelled([job]):
                            self.cancelled_jobs.add(job.job_id)
                    if job.job_id in self.cancelled_jobs:
                        self.metrics.jobs.labels(self.task, "cancelled").inc()
                        return None  # the gateway already sent `cancelled`
                    if d.entry_id in self.taken_over:
                        raise TakenOver
                    if job.deadline_ms <= now_ms():
                        self.metrics.jobs.labels(self.task, "expired").inc()
                        return self.error_reply(job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed during generation")
                    if job.stream:
                        await self.consumer.send(job, self._reply(job, "chunk", data=value, index=index))
                    else:
                        chunks.append(value)
                    index += 1
        finally:
            await self._close_steps(steps)
            self.metrics.inference.labels(self.task).observe(time.perf_counter() - started)
        self.metrics.jobs.labels(self.task, "ok").inc()
        # The generator's return value is the result. For a model that returns nothing: the chunk count for a stream
        # (its client has the chunks), the list of chunks for a plain job.
        if value is not None:
            return self._reply(job, "result", data=value)
        return self._reply(job, "result", data={"chunks": index} if job.stream else chunks)

    async def _step(self, steps: _Steps, job: Job) -> tuple[bool, Any] | Reply:
        """One step of a job's stream, or the answer to its failure."""
        try:
            return await self.threads.run(steps.step)
        except ModelCallHung:
            raise
        except ModelError as e:
            self.metrics.jobs.labels(self.task, "error").inc()
            return self.error_reply(job, ErrorCode.INVALID_REQUEST, str(e))
        except Exception:
            # Answered at once, as a failed plain batch is: left pending, the client would hear nothing until the job
            # had been regenerated and failed on three reclaims.
            log.exception("model.stream_failed", task=self.task)
            self.metrics.jobs.labels(self.task, "error").inc()
            return self.error_reply(job, ErrorCode.INTERNAL, "the model failed on this request")

    async def _close_steps(self, steps: _Steps) -> None:
        # A step cut off at shutdown may still run in its thread, and closing the generator then would raise; it is
        # dropped with the process.
        close = getattr(steps.gen, "close", None)  # a plugin's `stream` may return any iterator
        if close is not None and not getattr(steps.gen, "gi_running", False):
            await self.threads.run(close)

    # ---- helpers -------------------------------------------------------------------------------------------------

    def _input(self, job: Job) -> ModelInput:
        options = dict(job.options)
        if "max_new_tokens" in options:
            options["max_new_tokens"] = min(int(options["max_new_tokens"]), self.settings.max_new_tokens)
        else:
            options["max_new_tokens"] = self.settings.max_new_tokens
        options["deadline_ms"] = job.deadline_ms
        return ModelInput(text=job.input, options=options, seed=job.seed)

    def _reply(
        self,
        job: Job,
        kind: Literal["chunk", "result", "error"],
        *,
        data: Any = None,
        index: int = 0,
        code: str | None = None,
        message: str | None = None,
    ) -> Reply:
        headers: dict[str, str] = {}
        if tracing_enabled():
            inject_headers(headers)
        return Reply(
            job_id=job.job_id,
            request_id=job.request_id,
            owner=job.owner,
            session=job.session,
            task=job.task,
            kind=kind,
            index=index,
            data=data,
            code=code,
            message=message,
            worker=self.consumer.consumer,
            headers=headers,
        )

    def error_reply(self, job: Job, code: ErrorCode, message: str) -> Reply:
        return self._reply(job, "error", code=str(code), message=message)

    async def wait_streams(self, timeout_s: float) -> None:
        if self._stream_tasks and timeout_s > 0:
            await asyncio.wait(self._stream_tasks, timeout=timeout_s)

    def cancel_streams(self) -> None:
        for t in self._stream_tasks:
            t.cancel()
