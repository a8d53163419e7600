"""A worker's side of one task stream: read through the consumer group, reply and ack together, reclaim, dead-letter.

Replies go to the stream the job names (`reply_to`, its gateway's) in the same MULTI as the XACK, so a crash leaves a
job either answered-and-acked or pending (and so reclaimed and re-run), never acked without an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import ResponseError

from rtai_protocol import Job, Reply, encode
from rtai_protocol.codec import decode_internal
from rtai_telemetry.logging import get_logger
from rtai_transport import WORKER_GROUP, Keys, Redis, resp, text
from rtai_transport.lua import CLAIM_OWNED, PRUNE_CONSUMERS

log = get_logger("rtai_worker.consumer")

RECLAIM_SCANS_PER_PASS = 8
"""XAUTOCLAIM calls one reclaim pass may make while it finds nothing idle; each looks at up to 10 x count pending
entries (the scan resumes from there on the next pass)."""
HANDED_BACK_IDLE_MS = 10 * 60 * 1000
"""The idle time a job handed back at shutdown is marked with: far past any `reclaim_idle_ms`, so another worker
reclaims it at once."""
REPLY_STREAM_TTL_S = 3600
"""Every write to a reply stream sets it: the stream of a gateway that is gone expires (a live gateway's heartbeat keeps
its own alive). Reply streams have no MAXLEN: the gateway trims what it has read, and a cap would trim replies it has
not read yet (behind a pause, or a burst of stream chunks) whose jobs are already acked: answers lost for good. Their
size is bounded by the work the gateways admitted."""


@dataclass(slots=True)
class Delivery:
    entry_id: str
    job: Job
    deliveries: int = 1


@dataclass(slots=True)
class Unreadable:
    """A stream entry no worker of this version can run: malformed, another version's, not a job."""

    entry_id: str
    raw: bytes
    reason: str


class Consumer:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        task: str,
        consumer: str,
        *,
        reader: Redis | None = None,
        max_reply_bytes: int = 1 << 20,
    ) -> None:
        self.max_reply_bytes = max_reply_bytes
        self._reclaim_from = "0-0"
        """Where the next reclaim scan of the pending entries starts (XAUTOCLAIM's cursor; 0-0: the front)."""
        self.redis = redis
        self.reader = reader or redis
        self.keys = keys
        self.task = task
        self.stream = keys.jobs(task)
        self.consumer = consumer
        self._claim_owned_script = redis.register_script(CLAIM_OWNED)
        self.on_rejected: Callable[[int], None] | None = None
        """Told how many entries each `reject` moved to the dead letters (the worker counts them), whether the read
        or the reclaim found them."""

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, WORKER_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def read(self, count: int, block_ms: int | None) -> tuple[list[Delivery], list[Unreadable]]:
        """New jobs for this consumer. Returns (jobs, entries that could not be decoded)."""
        try:
            resp: Any = await self.reader.xreadgroup(
                WORKER_GROUP, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            # The stream or group vanished (Redis restarted without persistence): recreate and go on.
            log.warning("group.recreated", task=self.task)
            await self.ensure_group()
            return [], []
        if not resp:
            return [], []
        return self._decode(resp[0][1])

    def _decode(self, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> tuple[list[Delivery], list[Unreadable]]:
        good: list[Delivery] = []
        bad: list[Unreadable] = []
        for entry_id, fields in entries:
            eid = entry_id.decode()
            raw = fields.get(b"m", b"")
            try:
                msg = decode_internal(raw)
            except Exception as e:  # whatever the entry holds: one bad entry must not stop the jobs read with it
                bad.append(Unreadable(eid, raw, str(e)[:200] or type(e).__name__))
                continue
            if not isinstance(msg, Job):
                bad.append(Unreadable(eid, raw, f"a {msg.type} message, not a job"))
                continue
            good.append(Delivery(eid, msg))
        for b in bad:
            log.warning("job.unreadable", task=self.task, entry=b.entry_id, reason=b.reason)
        return good, bad

    async def reclaim(self, min_idle_ms: int, count: int = 64) -> list[Delivery]:
        """Take over jobs a silent consumer left pending, with their delivery counts."""
        # XAUTOCLAIM looks at no more than 10 x count pending entries per call and says where it stopped: a scan that
        # always started at the front would never reach idle entries behind that many live ones (a busy group's
        # batches and streams). The scan goes on from where the last one stopped, over a few calls per pass.
        entries: list[Any] = []
        for _ in range(RECLAIM_SCANS_PER_PASS):
            claimed: Any = await self.redis.xautoclaim(
                self.stream, WORKER_GROUP, self.consumer, min_idle_ms, self._reclaim_from, count=count
            )
            self._reclaim_from = text(claimed[0])
            entries = claimed[1]
            if entries or self._reclaim_from == "0-0":
                break
        if not entries:
            return []
        good, bad = self._decode([(eid, fields) for eid, fields in entries if fields])
        if bad:
            try:
                await self.reject(bad)
            except Exception as e:
                # The good jobs are claimed by now: dropping them with the bad would leave them idle until the next
                # reclaim, each charged a delivery more. The bad stay pending here and are rejected again then.
                log.warning("job.unreadable_unrejected", task=self.task, entries=len(bad), error=type(e).__name__)
        if good:
            detail: Any = await self.redis.xpending_range(
                self.stream,
                WORKER_GROUP,
                min=good[0].entry_id,
                max=good[-1].entry_id,
                count=len(entries) + 16,
                consumername=self.consumer,
            )
            counts = {d["message_id"].decode(): int(d["times_delivered"]) for d in detail}
            # The range holds this consumer's own pending jobs too (a batch or streams it is running): when they
            # crowd the reclaimed ones out of it, ask for those one by one. A guessed count could keep a poison job
            # below the dead-letter limit for good.
            for d in good:
                if d.entry_id not in counts:
                    one: Any = await self.redis.xpending_range(
                        self.stream, WORKER_GROUP, min=d.entry_id, max=d.entry_id, count=1
                    )
                    counts[d.entry_id] = int(one[0]["times_delivered"]) if one else 1
                d.deliveries = counts[d.entry_id]
        return good

    async def keep_claimed(self, entry_ids: Sequence[str]) -> set[str]:
        """Reset the idle time of jobs still running here, so a long generation is not taken over by the reclaimer.
        Returns the ids another worker took over meanwhile (this one was paused past `reclaim_idle_ms`): they are
        left to it."""
        _, taken = await self._claim_owned([(i, None) for i in entry_ids])
        return taken

    async def count_deliveries(self, counts: Sequence[tuple[str, int]]) -> set[str]:
        """Set the delivery counts of pending jobs (entry id, count) with XCLAIM's RETRYCOUNT, which also resets their
        idle time. Returns the ids this consumer still owns: one acked meanwhile (its first owner was only paused,
        and finished it) or taken over by another worker must not be run here."""
        owned, _ = await self._claim_owned(counts)
        return owned

    async def prune_consumers(self, min_idle_ms: int, *, including_self: bool = False) -> int:
        """Remove the group's consumers gone for `min_idle_ms` with nothing pending (this one too, at its shutdown,
        if nothing is pending for it); returns how many."""
        own = self.consumer if including_self else ""
        dropped: Any = await self.redis.eval(PRUNE_CONSUMERS, 1, self.stream, WORKER_GROUP, min_idle_ms, own)
        return int(dropped)

    async def hand_back(self, entries: Sequence[tuple[str, int | None]], idle_ms: int) -> None:
        """Mark unfinished jobs (entry id, delivery count to set, or None to keep it) as long idle so another worker
        reclaims them at once (shutdown). Only those this consumer owns: marking one another worker took over would let
        a third take it from that one."""
        await self._claim_owned(entries, idle_ms=idle_ms)

    async def _claim_owned(
        self, entries: Sequence[tuple[str, int | None]], idle_ms: int = 0
    ) -> tuple[set[str], set[str]]:
        """(ids this consumer owns, now claimed as asked; ids another consumer owns, left alone)."""
        if not entries:
            return set(), set()
        args: list[str | int] = [WORKER_GROUP, self.consumer, idle_ms]
        for entry_id, count in entries:
            args += [entry_id, "" if count is None else count]
        result: Any = await self._claim_owned_script(keys=[self.stream], args=args)
        owned, taken = result
        return {text(i) for i in owned}, {text(i) for i in taken}

    async def finish(self, done: Sequence[tuple[Delivery, Reply | None]]) -> None:
        """Publish the replies and ack (and delete) their jobs, atomically. Packed by hand (`rtai_transport.resp`):
        through redis-py's Pipeline this transaction was ~17% of a worker's CPU under load."""
        if not done:
            return
        commands: list[resp.Command] = []
        streams: dict[str, None] = {}
        for d, reply in done:
            if reply is not None:
                stream = d.job.reply_to
                commands.append(("XADD", stream, "*", "m", self._encoded(reply)))
                streams[stream] = None
        commands += [("EXPIRE", s, REPLY_STREAM_TTL_S) for s in streams]
        ids = [d.entry_id for d, _ in done]
        commands.append(("XACK", self.stream, WORKER_GROUP, *ids))
        commands.append(("XDEL", self.stream, *ids))
        await resp.transaction(self.redis, commands)

    async def send(self, job: Job, reply: Reply) -> None:
        """Publish a reply without acking (stream chunks; the job's final reply, through `finish`, sets the TTL)."""
        await self.redis.xadd(job.reply_to, {"m": self._encoded(reply)})

    def _encoded(self, reply: Reply) -> bytes:
        """The reply as the gateway reads it. One whose output cannot be encoded (a type JSON does not know) or is over
        `max_reply_bytes` becomes an `internal` error, so that it fails alone: raised here, it failed its whole
        batch's write, and every job in it was re-run until dead-lettered."""
        try:
            body = encode(reply)
        except Exception as e:
            log.error("reply.unencodable", task=self.task, request_id=reply.request_id, error=str(e)[:200])
            return encode(_failed(reply, "the model's output could not be encoded"))
        if len(body) > self.max_reply_bytes:
            log.error("reply.too_large", task=self.task, request_id=reply.request_id, bytes=len(body))
            return encode(
                _failed(reply, f"the output is {len(body)} bytes; replies take at most {self.max_reply_bytes}")
            )
        return body

    async def reject(self, bad: Sequence[Unreadable]) -> None:
        """Move entries no worker can run to the dead-letter stream, with the reason (`rtai dlq list` shows them), and
        answer the client where the entry says where to (a job of another version): it would otherwise wait for its
        deadline. Never a crash loop: the entries leave the queue."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for b in bad:
                fields = {"m": b.raw, "reason": b.reason, "deliveries": "1", "worker": self.consumer}
                pipe.xadd(self.keys.dead_letters(self.task), fields, maxlen=10_000, approximate=True)  # type: ignore[arg-type]
                answer = self._answer_for(b)
                if answer is not None:
                    pipe.xadd(answer.reply_to, {"m": encode(answer.reply)})
                    pipe.expire(answer.reply_to, REPLY_STREAM_TTL_S)
            ids = [b.entry_id for b in bad]
            pipe.xack(self.stream, WORKER_GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            await pipe.execute()
        if self.on_rejected is not None:
            self.on_rejected(len(bad))

    def _answer_for(self, b: Unreadable) -> _Answer | None:
        try:
            data = orjson.loads(b.raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        names = ("reply_to", "job_id", "request_id", "owner", "session")
        if not all(isinstance(data.get(n), str) for n in names):
            return None
        if not data["reply_to"].startswith(self.keys.replies("")):
            return None  # only ever a gateway's reply stream
        reply = Reply(
            job_id=data["job_id"],
            request_id=data["request_id"],
            owner=data["owner"],
            session=data["session"],
            task=self.task,
            kind="error",
            code="failed",
            message="the worker could not read this request (a gateway and workers of different versions?)",
        )
        return _Answer(data["reply_to"], reply)

    async def dead_letter(self, d: Delivery, reply: Reply) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.keys.dead_letters(self.task),
                {"m": encode(d.job), "deliveries": str(d.deliveries), "worker": self.consumer},
                maxlen=10_000,
                approximate=True,
            )
            pipe.xadd(d.job.reply_to, {"m": encode(reply)})
            pipe.expire(d.job.reply_to, REPLY_STREAM_TTL_S)
            pipe.xack(self.stream, WORKER_GROUP, d.entry_id)
            pipe.xdel(self.stream, d.entry_id)
            await pipe.execute()

    async def cancelled(self, jobs: Sequence[Job]) -> set[str]:
        """Job ids among these that clients cancelled."""
        if not jobs:
            return set()
        flags = await self.redis.mget([self.keys.cancelled(j.job_id) for j in jobs])
        return {j.job_id for j, f in zip(jobs, flags, strict=True) if f is not None}

    async def cancelled_if_known(self, jobs: Sequence[Job]) -> set[str]:
        """`cancelled`, best effort: when Redis cannot say (past the client's retries), none. The gateway already
        answered a cancelled job and drops its late result, while failing here would cost the caller its jobs: a batch
        just read left unrun until the reclaim, charged a delivery, or a generation thrown away half done."""
        try:
            return await self.cancelled(jobs)
        except Exception as e:
            log.warning("cancel_check.failed", task=self.task, error=type(e).__name__)
            return set()


@dataclass(slots=True)
class _Answer:
    reply_to: str
    reply: Reply


def _failed(reply: Reply, message: str) -> Reply:
    return Reply(
        job_id=reply.job_id,
        request_id=reply.request_id,
        owner=reply.owner,
        session=reply.session,
        task=reply.task,
        kind="error",
        index=reply.index,
        code="internal",
        message=message,
        worker=reply.worker,
    )
