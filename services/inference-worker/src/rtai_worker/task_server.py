"""Serving one task: the read loop that gathers batches and starts streams, and the jobs adopted from dead workers.

Model code runs in threads (`ModelThreads`) so heartbeats, claim refreshes and acks keep flowing while a batch
computes. Plain jobs run in batches (`Batches`); streaming jobs run concurrently (`Streams`, up to `max_streams`) and
check for cancellation between chunks (`Generation`); a streaming model's plain jobs run the same way, answered with
the result alone.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from rtai_protocol import ErrorCode, Reply, now_ms
from rtai_telemetry.logging import get_logger
from rtai_worker.batches import Batches
from rtai_worker.consumer import HANDED_BACK_IDLE_MS, Consumer, Delivery, Unreadable
from rtai_worker.engine import Model
from rtai_worker.generation import Generation
from rtai_worker.job_io import JobIO
from rtai_worker.metrics import WorkerMetrics
from rtai_worker.model_threads import ModelCallHung, ModelThreads
from rtai_worker.running_jobs import RunningJobs
from rtai_worker.settings import WorkerSettings
from rtai_worker.streams import Streams

RECLAIM_INLINE = 64
RECLAIM_THREADED = 4

log = get_logger("rtai_worker.task")


class TaskServer:
    """One task's jobs on this worker: its read loop (`serve`), the jobs it adopts from dead workers, and the parts
    that run them (`batches`, `streams`) around one record of what runs here (`running`)."""

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
        self.running = RunningJobs()
        self.io = JobIO(task, consumer.consumer, settings.max_new_tokens, metrics)
        consumer.on_rejected = lambda n: self.io.count("unreadable", n)
        self.threads = ModelThreads(task, settings.model_call_timeout_s, on_hung)
        self.batches = Batches(model, self.threads, consumer, self.io, self.running)
        generation = Generation(model, self.threads, consumer, self.io, self.running)
        self.streams = Streams(settings.max_streams, generation, consumer, on_solo_done=self._want_reclaim)
        self._adopted: deque[Delivery] = deque()
        """Jobs reclaimed from dead workers, waiting for the read loop to run them (already in `running`)."""
        self.wants_reclaim: asyncio.Event | None = None
        """Set when the jobs this server adopted have all run: the worker's reclaim loop then takes more at once."""
        self._adopting = False
        """An adopted job is being run (or waits for the streams to end, to run alone)."""
        self.stopping = asyncio.Event()

    # ---- the read loop -------------------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read and run batches until told to stop. Redis errors pause the loop; they never end it."""
        s = self.settings
        grouped = False
        failures = 0
        while not self.stopping.is_set():
            try:
                if not grouped:  # in the loop: one Redis error at start must not end this task's serving
                    await self.consumer.ensure_group()
                    grouped = True
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
        await self.batches.written()

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
            self.running.release(d)
        handed_back = False
        try:
            await self.consumer.hand_back([(d.entry_id, d.deliveries - 1) for d in waiting], HANDED_BACK_IDLE_MS)
            handed_back = True
        except Exception as e:
            log.warning("adopted.hand_back_failed", task=self.task, error=type(e).__name__)
        finally:
            if not handed_back:  # failed or cut off: back in `running`, and the worker's shutdown hands them back
                for d in waiting:
                    self.running.add(d)
        if handed_back:
            log.info("adopted.handed_back", task=self.task, jobs=len(waiting))

    def reclaim_budget(self) -> int:
        """How many jobs of dead workers to take over now. Adopted jobs run one at a time (`_run_adopted`), so a worker
        takes no more than it can start soon and leaves the rest pending for the other workers' reclaim: none while an
        adopted job waits or runs here, one stream once no reclaimed stream runs here (it runs alone) and a stream slot
        is free, a few jobs of a threaded model; an inline model's jobs take microseconds each."""
        if self._adopted or self._adopting:
            return 0
        if self.model.info.streaming:
            # 0 while every stream slot is taken: the job would wait here while another worker could start it.
            return 0 if self.streams.solo_running or self.streams.full else 1
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
            self.running.add(d)
            self._adopted.append(d)
        try:
            await self.consumer.count_deliveries([(d.entry_id, d.deliveries - 1) for d in reclaimed])
        except Exception as e:  # only over-charges them: the count is set again, absolutely, when each starts
            log.warning("reclaim.count_failed", task=self.task, error=type(e).__name__)
        if self.stopping.is_set():
            # Told to stop while the reclaim ran: the read loop may be gone already, and they would wait for the drain.
            await self._hand_back_adopted()

    async def _run_adopted(self, d: Delivery) -> None:
        # One at a time, with the answers before it written first: a reclaimed job may be what killed the worker that
        # had it (a crash in the model). Run in a batch, or while those answers are still being written, it would take
        # those jobs down with it again, and they too would end in the dead letters. For the same reason a reclaimed job
        # of a streaming model waits for the streams running here to end, and a reclaimed stream runs alone: no stream
        # starts beside it (and, as the read loop waits for a stream slot, no batch) until it is done.
        try:
            if self.model.info.streaming:
                await self.streams.wait_all(interrupted=self.stopping.is_set)
                if self.stopping.is_set():
                    self._adopted.appendleft(d)  # handed back uncharged, with the others not started
                    return
            await self.batches.written()  # the answers of the batch before: an inline model's crash would lose them
            # This run counts (see `adopt`). A job no longer pending was finished by its first owner meanwhile.
            if d.entry_id not in await self.consumer.count_deliveries([(d.entry_id, d.deliveries)]):
                self.running.release(d)
                return
            await self.run([d], reclaimed=True)
            await self.batches.written()
        except ModelCallHung:
            raise  # kept in `running`, to be handed back
        except Exception:
            # Left pending and no longer refreshed: reclaimed again after `reclaim_idle_ms`, as any batch whose run
            # failed; kept in `running`, its claim would be refreshed by a worker that will never run it.
            self.running.release(d)
            raise

    def lost_claims(self, entry_ids: set[str]) -> None:
        """Jobs of ours that another worker reclaimed while we were paused and runs now (`Consumer.keep_claimed`). Our
        claim is not taken back. A stream stops at its next chunk; a batch already in the model finishes, and its
        answer is written with its ack (the gateway keeps whichever final it logs first and drops the other)."""
        for d in self.running.take_over(entry_ids):
            self.metrics.claims_lost.labels(self.task).inc()
            log.warning("job.taken_over", task=self.task, request_id=d.job.request_id, entry=d.entry_id)

    async def _read_budget(self, size: int) -> int:
        """How many jobs to read now. A streaming model takes no more than it has free stream slots for: jobs it
        read but could not start would sit claimed here while other replicas (or new ones scaled up for the
        backlog) stay idle."""
        if not self.model.info.streaming:
            return size
        # An adopted job goes first: the wait ends when one comes.
        await self.streams.wait_for_slot(interrupted=lambda: self.stopping.is_set() or bool(self._adopted))
        return max(1, min(size, self.streams.free))

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
            await self.consumer.reject(bad)
        except Exception as e:
            log.warning("reject.failed", task=self.task, entries=len(bad), error=type(e).__name__)

    async def run(self, batch: list[Delivery], *, reclaimed: bool = False) -> None:
        now = now_ms()
        m = self.metrics
        for d in batch:
            if reclaimed:
                m.reclaimed.labels(self.task).inc()
            if reclaimed or d.deliveries > 1 or d.job.attempt > 1:
                # Reclaimed: a job handed back at shutdown goes back uncharged (delivery count 1), but it ran before.
                m.reruns.labels(self.task).inc()
            else:
                # A first run only: a re-run's wait since its enqueue holds the runs before it, and observed again it
                # would count one job's wait twice.
                m.queue_wait.labels(self.task).observe(max(now - d.job.enqueued_ms, 0) / 1000)
        live, finished = await self._screen(batch, now)
        if finished:
            try:
                await self.consumer.finish(finished)
            except Exception as e:
                # Left pending and unclaimed: the reclaim finds them and screens them again. The live jobs run on.
                log.warning("screened.unwritten", task=self.task, jobs=len(finished), error=type(e).__name__)
            else:
                self.io.count_answered(r for _, r in finished)
            for d, _ in finished:
                self.running.release(d)  # adopted jobs are in `running` already
        # A streaming model runs its plain jobs as streams too (each in a stream slot, checked for a cancel and its
        # deadline at every step, answered with the result only): in one `predict` call they held the read loop while
        # the whole batch generated (no stream started meanwhile), each waited for the others, and a cancel was ignored.
        as_streams = self.model.info.streaming
        streams = [d for d in live if d.job.stream or as_streams]
        plain = [d for d in live if not (d.job.stream or as_streams)]
        for d in streams:
            self.streams.start(d, solo=reclaimed)
        if plain:
            await self.batches.run(plain)

    async def _screen(
        self, batch: list[Delivery], now: int
    ) -> tuple[list[Delivery], list[tuple[Delivery, Reply | None]]]:
        """Split off jobs that must not run: expired (answered), cancelled (the gateway already answered)."""
        # The cancel flags cost a Redis round trip per batch. A declared-cheap inline model (VADER: ~25 us) costs less
        # than that, so it runs a job cancelled in the last instant anyway: the gateway has already sent `cancelled`
        # and drops the late result as a duplicate final (LOG_FRAME). Measured: L p50 -0.3 ms, T +13% (performance.md).
        cancelled = set() if self.model.info.inline else await self.consumer.cancelled_if_known([d.job for d in batch])
        live: list[Delivery] = []
        done: list[tuple[Delivery, Reply | None]] = []
        for d in batch:
            if d.job.job_id in cancelled:
                done.append((d, None))
            elif d.job.deadline_ms <= now:
                late = self.io.error(d.job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before a worker could run it")
                done.append((d, late))
            else:
                live.append(d)
        return live, done
