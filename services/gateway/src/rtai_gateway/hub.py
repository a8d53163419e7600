"""The gateway's routing core: sessions, requests in flight, and every frame that reaches a client.

One hub per process. Requests are admitted and enqueued here; the single reply reader hands worker replies here;
deadlines, cancels, disconnects and resumes end here. Every numbered frame goes through the session log in Redis
(Lua scripts in rtai_transport.lua), which is what makes "exactly one final frame per request" hold across re-runs,
re-submissions and gateways.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtai_gateway.catalog import Catalog
from rtai_gateway.connection import WS_1013_TRY_AGAIN_LATER, Connection
from rtai_gateway.framelog import FrameLog
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings
from rtai_protocol import Accepted, Chunk, Error, ErrorCode, Forward, Infer, Job, Reply, Result, encode, now_ms
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import extract_context, inject_headers, trace_id_of, tracing_enabled
from rtai_transport import Keys, Redis, connection_name
from rtai_transport.lua import CLAIM_SESSION, LOG_FRAME, SUBMIT

log = get_logger("rtai_gateway.hub")
tracer = trace.get_tracer("rtai_gateway")


@dataclass(eq=False)
class Pending:
    """A request this gateway accepted and has not finished."""

    job: Job
    session: Session
    received: float
    """time.monotonic() at receipt, for the latency histogram."""
    entry_id: str = ""
    first_chunk_seen: bool = False
    resend_due: bool = False
    """Its job must be enqueued again (the Redis node changed) and the re-submission failed: the heartbeat retries."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.owner, self.job.request_id)


def refusal(request_id: str | None, code: ErrorCode | str, message: str, retry_after_ms: int | None = None) -> bytes:
    return encode(Error(id=request_id, code=str(code), message=message, retry_after_ms=retry_after_ms))


_PASSING_STATES = ("OOM", "READONLY", "MASTERDOWN", "NOREPLICAS", "BUSY", "LOADING", "NOSCRIPT", "NOPERM", "TRYAGAIN")


def refused_for_good(e: ResponseError) -> bool:
    """Whether Redis will refuse this reply again whatever happens meanwhile (a key of the wrong type, an error in the
    script), as opposed to a state of the server that passes (out of memory, a read-only or cut-off master, a busy
    script): those are retried for as long as they last, as an outage is. redis-py gives most of the latter their own
    classes; NOREPLICAS and BUSY come as plain errors, and a script's error names the failed command's code."""
    if type(e) is not ResponseError:
        return False
    message = str(e)
    return not any(code in message for code in _PASSING_STATES)


class RepliesRejected(Exception):
    """Redis refused to log some replies of a batch: errors from the log script itself, not an outage."""

    def __init__(self, rejected: list[tuple[Reply, ResponseError]]) -> None:
        super().__init__(f"{len(rejected)} replies refused by Redis: {rejected[0][1]}")
        self.rejected = rejected


class Hub:
    def __init__(
        self,
        settings: GatewaySettings,
        redis: Redis,
        keys: Keys,
        metrics: GatewayMetrics,
        catalog: Catalog | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.metrics = metrics
        self.catalog: Catalog = catalog  # type: ignore[assignment] # set by the app right after construction
        self.gateway_id = settings.gateway_id
        self.reply_stream = keys.replies(settings.gateway_id)
        self.sessions: dict[str, Session] = {}
        self.detached: dict[str, Session] = {}
        """Sessions without a socket, waiting for a resume, oldest detach first: the reaper reads only these (and stops
        at the first still in its grace), so idle sockets cost it nothing."""
        self.pending: dict[tuple[str, str], Pending] = {}
        self.framelog = FrameLog(
            settings.redis,
            lanes=settings.sessions.log_lanes,
            name=connection_name("rtai-gateway", settings.gateway_id, "framelog"),
        )
        self.finish_hooks: list[Callable[[Pending], None]] = []
        """Called when a request this gateway admitted ends (any outcome): per-user slots, fairness."""
        self.reap_hooks: list[Callable[[], None]] = []
        """Called on every pass of the reaper (the fair scheduler ends requests whose deadline passed in its queues)."""
        # Job ids only need to be unique: 64 random bits per process, then a counter (a random id per job read
        # /dev/urandom each time: 0.6 us against 0.13 us here, yet 1.7% of the gateway's samples under load).
        self._job_ids_from = f"{secrets.token_hex(8)}."
        self._job_ids = itertools.count()
        self._log_frame = redis.register_script(LOG_FRAME)
        self._submit = redis.register_script(SUBMIT)
        self.claim_session = redis.register_script(CLAIM_SESSION)
        self.gap_filler: Callable[[Session], None] = self._fill_gap
        """Every session's `fill_gap` hook: one bound method for all, not one object more per socket."""
        self._gap_reads: set[asyncio.Task[None]] = set()

    # ---- admission and submission -------------------------------------------------------------------------------

    async def submit(self, session: Session, req: Infer) -> None:
        refused = self._admit(session, req)
        if refused is not None:
            session.send(refused)
            return
        received = time.monotonic()
        job = self._make_job(session, req)
        if not tracing_enabled():
            await self._enqueue_new(session, req, job, received)
            return
        # Each request is its own trace (a root span), linked to whatever span the connection runs under: a
        # WebSocket lives for hours, and one trace per connection would bury every request in it.
        connection_span = trace.get_current_span().get_span_context()
        with tracer.start_as_current_span(
            "gateway.ws.receive",
            context=otel_context.Context(),
            links=[Link(connection_span)] if connection_span.is_valid else [],
            attributes={"rtai.task": req.task, "rtai.request_id": req.id},
        ):
            headers: dict[str, str] = {}
            with tracer.start_as_current_span("transport.publish"):
                inject_headers(headers)
                job = job.model_copy(update={"headers": headers})
                await self._enqueue_new(session, req, job, received)

    def _admit(self, session: Session, req: Infer) -> bytes | None:
        """None to go ahead, or the refusal frame (counted as the request's outcome)."""
        if (session.identity, req.id) in self.pending:
            # A copy of a request in flight (a client sends its unfinished requests again after a reconnect): it was
            # admitted once, and refusing the copy (its task's workers all restarting, say) would end it for the client.
            return None  # _enqueue_new answers it without new work
        info = self.catalog.accepting(req.task)
        retry = self.settings.admission.retry_after_ms
        if info is None:
            if not self.catalog.redis_ok:
                msg = "the queue backend is unreachable"
                return self.refused(req, ErrorCode.UNAVAILABLE, msg, retry, "unavailable")
            if req.task in self.catalog.registered:
                msg = f"no live worker serves task {req.task!r} right now"
                return self.refused(req, ErrorCode.UNAVAILABLE, msg, retry, "no_workers")
            # Unknown task names come from clients: one "unknown" label keeps the metric's cardinality bounded.
            self.metrics.requests.labels("unknown", ErrorCode.UNKNOWN_TASK).inc()
            self.metrics.duration.labels("unknown", ErrorCode.UNKNOWN_TASK).observe(0)
            return refusal(
                req.id, ErrorCode.UNKNOWN_TASK, f"no live worker serves task {req.task!r}; see GET /v1/tasks"
            )
        if len(req.input) > info.max_input_chars:
            msg = f"input has {len(req.input)} characters; task {req.task!r} takes at most {info.max_input_chars}"
            return self.refused(req, ErrorCode.INVALID_REQUEST, msg)
        if req.options.stream and not info.streaming:
            return self.refused(
                req, ErrorCode.INVALID_REQUEST, f"task {req.task!r} does not stream; send options.stream=false"
            )
        cap = self.settings.admission.max_inflight_per_connection
        if len(session.requests) >= cap:
            return self.refused(
                req, ErrorCode.OVERLOADED, f"at most {cap} requests in flight per connection", retry, "inflight"
            )
        refused = self.catalog.admission(req.task)
        if refused is not None:
            code = ErrorCode.UNAVAILABLE if refused.reason == "unavailable" else ErrorCode.OVERLOADED
            return self.refused(req, code, refused.message, refused.retry_after_ms, refused.reason)
        return None

    def refused(
        self, req: Infer, code: ErrorCode, message: str, retry_after_ms: int | None = None, reason: str | None = None
    ) -> bytes:
        """The refusal frame for a request that is not accepted, counted as its outcome."""
        m = self.metrics
        # Task names come from clients: only names the registry knows become label values.
        task = req.task if req.task in self.catalog.registered else "unknown"
        m.requests.labels(task, code).inc()
        m.duration.labels(task, code).observe(0)
        if reason is not None:
            m.refusals.labels(task, reason).inc()
        return refusal(req.id, code, message, retry_after_ms)

    def _make_job(self, session: Session, req: Infer) -> Job:
        d = self.settings.deadlines
        budget = min(req.options.deadline_ms or d.default_ms, d.max_ms)
        now = now_ms()
        options = req.options.model_dump(exclude_none=True, exclude={"stream", "deadline_ms"})
        return Job(
            job_id=f"{self._job_ids_from}{next(self._job_ids):x}",
            request_id=req.id,
            owner=session.identity,
            session=session.id,
            task=req.task,
            input=req.input,
            options=options,
            stream=req.options.stream,
            deadline_ms=now + budget,
            enqueued_ms=now,
            reply_to=self.reply_stream,
            # Deterministic per (identity, request id): a re-run after a crash reproduces the same output.
            seed=zlib.crc32(f"{session.identity}\x00{req.id}".encode()),
        )

    async def _enqueue_new(self, session: Session, req: Infer, job: Job, received: float) -> None:
        s = self.settings.sessions
        k = self.keys
        accepted = encode(Accepted(id=job.request_id, task=job.task, deadline_ms=job.deadline_ms))
        admitted: list[Pending] = []

        def then(res: Any) -> None:
            if isinstance(res, Exception):
                log.warning("submit.failed", request_id=job.request_id, error=type(res).__name__)
                if isinstance(res, RedisConnectionError | RedisTimeoutError):  # retried on a fresh connection too
                    self.catalog.mark_unreachable()
                retry = self.settings.admission.retry_after_ms
                msg = "the queue backend is unreachable"
                session.send(self.refused(req, ErrorCode.UNAVAILABLE, msg, retry, "unavailable"))
                return
            status = res[0].decode()
            if status == "new":
                log.debug(
                    "request.accepted", request_id=job.request_id, trace_id=trace_id_of(job.headers), task=job.task
                )
                p = Pending(job=job, session=session, received=received, entry_id=res[1].decode())
                self.track(p)
                admitted.append(p)
                self.catalog.note_enqueued(job.task)
                session.deliver(int(res[2]), accepted)
            elif status == "done" and (
                res[2].decode() not in ("", session.id) or session.takes_logged_final(job.request_id)
            ):
                # Finished earlier: send the stored final frame again, unnumbered. In the same session (or one not
                # known: its admission was lost in a failover) only if this gateway has not sent it on the session's
                # sockets (live, in the replay, in a gap fill): the session log may have trimmed it before the resume.
                session.send(res[1])
            elif status == "elsewhere":
                msg = "this request id is in flight in another session; resume that session"
                session.send(refusal(job.request_id, ErrorCode.DUPLICATE_REQUEST, msg))
            elif status == "inflight" and res[3] and (session.identity, job.request_id) not in self.pending:
                self._adopt_admitted(session, res, received)
            # Otherwise "inflight" here, or running with its admission lost (no job stored): its frames are already on
            # their way from the gateway that runs it; nothing new to send.

        keys = [
            k.request(job.owner, job.request_id),
            k.jobs(job.task),
            k.session_inflight(session.id),
            k.session_seq(session.id),
            k.session_log(session.id),
        ]
        args = [
            encode(job),
            session.id,
            job.request_id,
            s.request_ttl_s,
            s.jobs_maxlen,
            s.ttl_s,
            accepted,
            s.log_maxlen,
            session.delivered,
        ]
        await self.framelog.submit(session.id, self._submit, keys, args, then)
        if admitted and session.conn is None and self.sessions.get(session.id) is not session:
            # The session ended while SUBMIT ran (a clean close, the fair scheduler submitting for it): its end
            # cancelled what it tracked, and this request was not tracked yet.
            await self.cancel(admitted[0], notify=False)

    def _adopt_admitted(self, session: Session, res: Any, received: float) -> None:
        """Admitted by an earlier run of SUBMIT whose answer never came back (the connection dropped and the Redis
        client sent the pipeline again): track the stored job and send its `accepted` frame, as for a new one."""
        stored = Job.model_validate_json(res[3])
        self.track(Pending(job=stored, session=session, received=received, entry_id=res[1].decode()))
        accepted = Accepted(id=stored.request_id, task=stored.task, deadline_ms=stored.deadline_ms)
        session.deliver(int(res[2]), encode(accepted))

    def track(self, p: Pending) -> None:
        self.pending[p.key] = p
        p.session.requests.add(p.job.request_id)
        self.metrics.inflight.set(len(self.pending))

    def _untrack(self, p: Pending) -> None:
        self.pending.pop(p.key, None)
        p.session.requests.discard(p.job.request_id)
        self.metrics.inflight.set(len(self.pending))

    # ---- frames from workers and from the gateway itself --------------------------------------------------------

    def _log_keys(self, session: str, owner: str, request_id: str) -> list[str]:
        k = self.keys
        return [
            k.session_seq(session),
            k.session_log(session),
            k.session_meta(session),
            k.request(owner, request_id),
            k.session_inflight(session),
        ]

    def _log(
        self,
        session: Session | None,
        session_id: str,
        owner: str,
        request_id: str,
        body: bytes,
        kind: str,
        index: int,
        then: Callable[[Any], None],
        after_chunk: int | None = None,
    ) -> asyncio.Future[None]:
        """Number and log one frame of a request (LOG_FRAME, pipelined by the frame log). `session`, where this gateway
        holds it, gives the floor: never a number at or below what its socket was already sent. `after_chunk`: a chunk
        index of the same request submitted just before; the frame is held back (-1) unless that chunk is logged."""
        s = self.settings.sessions
        floor = session.delivered if session is not None else 0
        args = [body, kind, index, s.ttl_s, s.log_maxlen, request_id, s.request_ttl_s, floor]
        if after_chunk is not None:
            args.append(after_chunk + 1)
        return self.framelog.submit(
            session_id, self._log_frame, self._log_keys(session_id, owner, request_id), args, then
        )

    async def handle_replies(self, replies: list[Reply], *, drop_rejected: bool = False) -> None:
        """Log a batch of worker replies (pipelined, in order), deliver them, forward those another gateway holds.
        Raises if Redis failed, so the reader reads the same replies again (the log scripts drop repeats): an outage,
        a lost connection or a passing refusal (out of memory, a read-only master) raises as it is; a reply Redis
        refused to log for good (an error in the script, a key of the wrong type: `refused_for_good`) raises
        `RepliesRejected`. With `drop_rejected` those are logged and dropped instead, so that one reply Redis refuses
        for good cannot hold up every reply behind it."""
        forwards: list[tuple[str, bytes]] = []
        failures, rejected, held = await self._log_replies(replies, forwards, in_order=True)
        if failures:
            raise failures[0]
        if rejected and not drop_rejected:
            raise RepliesRejected(rejected)
        if held:
            # Held back behind a chunk that is not logged and will not be: Redis refused it for good (dropped below),
            # or its request's state vanished between the two ops. Nothing will come before them now.
            failures, again, _ = await self._log_replies(held, forwards, in_order=False)
            if failures:
                raise failures[0]
            if again and not drop_rejected:
                raise RepliesRejected(again)
            rejected += again
        for r, e in rejected:
            log.error("reply.rejected", request_id=r.request_id, session=r.session, kind=r.kind, error=str(e)[:200])
            self.metrics.replies_rejected.inc()
        if forwards:
            await self._forward(forwards)

    async def _forward(self, forwards: list[tuple[str, bytes]]) -> None:
        """Add frames to other gateways' reply streams. No MAXLEN (it could trim replies such a gateway has not read);
        a TTL, so that the stream of a gateway gone meanwhile, recreated here, expires."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream, msg in forwards:
                pipe.xadd(stream, {"m": msg})
                pipe.expire(stream, self.settings.sessions.ttl_s)
            await pipe.execute()

    async def _log_replies(
        self, replies: list[Reply], forwards: list[tuple[str, bytes]], *, in_order: bool
    ) -> tuple[list[Exception], list[tuple[Reply, ResponseError]], list[Reply]]:
        """Log and deliver replies; returns (failures, replies refused for good, replies held back). `in_order`: a
        request's frame that follows one of its chunks in this batch is logged only after that chunk (LOG_FRAME's
        ARGV 9). One op of a pipeline can fail alone, and a later chunk or the final logged past it would make the
        log skip the failed chunk for good."""
        failures: list[Exception] = []
        rejected: list[tuple[Reply, ResponseError]] = []
        held: list[Reply] = []
        last_chunk: dict[tuple[str, str], int] = {}
        logged: list[asyncio.Future[None]] = []
        for r in replies:
            body, kind = _frame_of(r)

            def then(res: Any, r: Reply = r, body: bytes = body, kind: str = kind) -> None:
                if isinstance(res, ResponseError) and refused_for_good(res):
                    rejected.append((r, res))
                    return
                if isinstance(res, Exception):
                    failures.append(res)
                    return
                seq, holder = int(res[0]), res[1].decode() if res[1] else ""
                if seq < 0:
                    held.append(r)
                elif seq:  # 0: a chunk after the final frame (or a repeat no longer in the log), dropped by design
                    self._after_logged(r, _logged_body(res, body), kind, seq, holder, forwards)

            key = (r.owner, r.request_id)
            after = last_chunk.get(key) if in_order else None
            if kind == "chunk":
                last_chunk[key] = max(r.index, last_chunk.get(key, r.index))
            session = self.sessions.get(r.session)
            logged.append(self._log(session, r.session, r.owner, r.request_id, body, kind, r.index, then, after))
        for done in logged:  # on several lanes: each may finish first
            await done
        return failures, rejected, held

    def _after_logged(
        self, r: Reply, body: bytes, kind: str, seq: int, holder: str, forwards: list[tuple[str, bytes]]
    ) -> None:
        p = self.pending.get((r.owner, r.request_id))
        if p is not None:
            if kind == "chunk" and not p.first_chunk_seen:
                p.first_chunk_seen = True
                self.metrics.first_chunk.labels(p.job.task).observe(time.monotonic() - p.received)
            if kind == "final":
                self._finished(p, "ok" if r.kind == "result" else (r.code or ErrorCode.INTERNAL), r.headers)
        if holder and holder != self.gateway_id:
            # Another gateway holds the session: forwarded every time, a repeat too (a batch read again because the
            # forward failed), since only the holder knows what its socket got (it drops a second final).
            forward = Forward(
                session=r.session,
                seq=seq,
                frame=body.decode(),
                owner=r.owner,
                request_id=r.request_id,
                final=kind == "final",
            )
            forwards.append((self.keys.replies(holder), encode(forward)))
            return
        session = self.sessions.get(r.session)
        if session is None or session.conn is None:
            return  # in the log, for the replay of a resume
        if kind != "final" or session.takes_logged_final(r.request_id):
            session.deliver(seq, body)

    def deliver_forward(self, fwd: Forward) -> None:
        """A frame another gateway logged for a session this gateway now holds (it took the session over)."""
        session = self.sessions.get(fwd.session)
        if session is not None and (not fwd.final or session.takes_logged_final(fwd.request_id)):
            session.deliver(fwd.seq, fwd.frame.encode())
        if fwd.final:
            p = self.pending.get((fwd.owner, fwd.request_id))
            if p is not None:
                self.end(p)  # its outcome is counted by the gateway that logged it

    def end(self, p: Pending) -> None:
        """Stop tracking a request, and give back what it held here (its user's fair slot)."""
        self._untrack(p)
        for hook in self.finish_hooks:
            hook(p)

    def _finished(self, p: Pending, outcome: str, headers: dict[str, str] | None = None) -> None:
        self.end(p)
        elapsed = time.monotonic() - p.received
        log.debug(
            "request.finished",
            request_id=p.job.request_id,
            trace_id=trace_id_of(p.job.headers),
            task=p.job.task,
            outcome=outcome,
            ms=round(elapsed * 1000, 2),
        )
        self.metrics.requests.labels(p.job.task, outcome).inc()
        self.metrics.duration.labels(p.job.task, outcome).observe(elapsed)
        if headers:
            with tracer.start_as_current_span(
                "gateway.ws.send", context=extract_context(headers), attributes={"rtai.outcome": outcome}
            ):
                pass

    async def cancel(self, p: Pending, *, notify: bool) -> None:
        """Remove a queued job or stop a running one; the client (if told) gets a final `cancelled` error."""
        job = p.job
        k = self.keys
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if p.entry_id:
                    pipe.xdel(k.jobs(job.task), p.entry_id)
                pipe.set(k.cancelled(job.job_id), b"1", px=max(job.deadline_ms - now_ms(), 1000))
                pipe.publish(k.cancel_channel, job.job_id)
                await pipe.execute()
        except Exception as e:
            log.warning("cancel.unsignalled", request_id=job.request_id, error=type(e).__name__)
        why = "cancelled by the client" if notify else "cancelled: the client went away"
        await self.finish_locally(p, ErrorCode.CANCELLED, why)

    async def finish_locally(self, p: Pending, code: ErrorCode, message: str) -> None:
        """End a request with an error the gateway decides itself (deadline, cancel), through the log like any final."""
        if self.pending.get(p.key) is not p:
            return  # its final came while the caller awaited something (a cancel's signal, an earlier expiry's log)
        job = p.job
        body = encode(Error(id=job.request_id, code=str(code), message=message))
        self._finished(p, str(code))

        tell: dict[str, bytes] = {}

        def then(res: Any) -> None:
            if isinstance(res, Exception):
                # Redis is down: the socket still gets its final frame, unnumbered (it cannot be replayed on resume).
                log.warning("final.unlogged", request_id=job.request_id, error=type(res).__name__)
                p.session.sent_unlogged_final(job.request_id, body)
                return
            seq, holder = int(res[0]), res[1].decode() if res[1] else ""
            if not seq:
                return
            if p.session.conn is not None and p.session.first_final(job.request_id):
                p.session.deliver(seq, _logged_body(res, body))
            final = Forward(session=job.session, seq=seq, frame=_logged_body(res, body).decode(), owner=job.owner,
                            request_id=job.request_id, final=True)  # fmt: skip
            if job.reply_to != self.reply_stream:
                tell[job.reply_to] = encode(final)
            if holder and holder != self.gateway_id:
                tell[self.keys.replies(holder)] = encode(final)

        await self._log(p.session, job.session, job.owner, job.request_id, body, "final", 0, then)
        if tell:
            await self._tell(job.request_id, tell)

    async def _tell(self, request_id: str, finals: dict[str, bytes]) -> None:
        """Forward a final this gateway logged to the gateways that track its request too. A request taken over with
        its session still runs for the gateway that admitted it (its replies go there): one ended here (a cancel, a
        deadline) is ended there too, or that gateway would hold it, and its user's slot, until the deadline (a
        cancelled job sends no reply). And a session resumed on another gateway meanwhile: its holder tracks the
        request, and its socket waits for the final."""
        try:
            await self._forward(list(finals.items()))
        except Exception as e:  # those gateways end it at its deadline, as before
            log.warning("final.untold", request_id=request_id, error=type(e).__name__)

    def _fill_gap(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(self._read_gap(session, session.conn))
        self._gap_reads.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._gap_reads.discard)

    async def _read_gap(self, session: Session, conn: Connection | None) -> None:
        """A frame skipped a number (`Session.deliver`): read the session log after what the socket has."""
        try:
            logged = await self.logged_after(session)
        except Exception as e:
            # The missing frame cannot be read now. Sending the newer ones would lose it for good; closing makes the
            # client resume from its last seq, and the replay sends the log in order.
            log.warning("session.gap_unread", session=session.id, error=type(e).__name__)
            if conn is not None and session.conn is conn:
                conn.close(WS_1013_TRY_AGAIN_LATER, "resume with your last seq")
            logged = []
        session.end_fill(logged)

    async def logged_after(self, session: Session) -> list[tuple[int, bytes]]:
        """The session log's frames numbered above what the session's socket was sent, as (seq, frame) in order."""
        entries: Any = await self.redis.xrange(
            self.keys.session_log(session.id), min=f"{session.delivered + 1}-0", max="+"
        )
        return [(int(entry_id.split(b"-")[0]), fields[b"f"]) for entry_id, fields in entries]


def _logged_body(res: Any, sent: bytes) -> bytes:
    """The frame a LOG_FRAME answer stands for: a repeat comes back with the body logged the first time (the one the
    log replays on resume), a new frame is the one sent."""
    return bytes(res[2]) if len(res) > 2 else sent


def _frame_of(r: Reply) -> tuple[bytes, str]:
    """The client frame (without seq) for a worker reply, and its log kind."""
    if r.kind == "chunk":
        return encode(Chunk(id=r.request_id, index=r.index, data=r.data)), "chunk"
    if r.kind == "result":
        return encode(Result(id=r.request_id, output=r.data)), "final"
    return encode(Error(id=r.request_id, code=r.code or ErrorCode.INTERNAL, message=r.message or "")), "final"
