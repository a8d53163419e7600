"""Admission of requests: the checks a request passes before it is queued, its job, and the SUBMIT that enqueues it
(or finds it in flight, finished, or admitted by a run whose answer was lost). A refusal is counted as the request's
outcome."""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_protocol import Accepted, Error, ErrorCode, Infer, Job, encode, now_ms
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import inject_headers, trace_id_of, tracing_enabled

if TYPE_CHECKING:
    from rtai_gateway.hub import Hub

log = get_logger("rtai_gateway.admission")
tracer = trace.get_tracer("rtai_gateway")


def refusal(request_id: str | None, code: ErrorCode | str, message: str, retry_after_ms: int | None = None) -> bytes:
    """An error frame that refuses a request or a connection. Not counted: `refused` counts a request's outcome."""
    return encode(Error(id=request_id, code=str(code), message=message, retry_after_ms=retry_after_ms))


async def submit(hub: Hub, session: Session, req: Infer) -> None:
    refused = _admit(hub, session, req)
    if refused is not None:
        session.send(refused)
        return
    received = time.monotonic()
    job = _make_job(hub, session, req)
    if not tracing_enabled():
        await enqueue_new(hub, session, req, job, received)
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
            await enqueue_new(hub, session, req, job, received)


def _admit(hub: Hub, session: Session, req: Infer) -> bytes | None:
    """None to go ahead, or the refusal frame (counted as the request's outcome)."""
    if (session.identity, req.id) in hub.pending:
        # A copy of a request in flight (a client sends its unfinished requests again after a reconnect): it was
        # admitted once, and refusing the copy (its task's workers all restarting, say) would end it for the client.
        return None  # enqueue_new answers it without new work
    info = hub.catalog.accepting(req.task)
    retry = hub.settings.admission.retry_after_ms
    if info is None:
        if not hub.catalog.redis_ok:
            msg = "the queue backend is unreachable"
            return hub.refused(req, ErrorCode.UNAVAILABLE, msg, retry, "unavailable")
        if req.task in hub.catalog.registered:
            msg = f"no live worker serves task {req.task!r} right now"
            return hub.refused(req, ErrorCode.UNAVAILABLE, msg, retry, "no_workers")
        # Unknown task names come from clients: one "unknown" label keeps the metric's cardinality bounded.
        hub.metrics.requests.labels("unknown", ErrorCode.UNKNOWN_TASK).inc()
        hub.metrics.duration.labels("unknown", ErrorCode.UNKNOWN_TASK).observe(0)
        return refusal(req.id, ErrorCode.UNKNOWN_TASK, f"no live worker serves task {req.task!r}; see GET /v1/tasks")
    if len(req.input) > info.max_input_chars:
        msg = f"input has {len(req.input)} characters; task {req.task!r} takes at most {info.max_input_chars}"
        return hub.refused(req, ErrorCode.INVALID_REQUEST, msg)
    if req.options.stream and not info.streaming:
        return hub.refused(
            req, ErrorCode.INVALID_REQUEST, f"task {req.task!r} does not stream; send options.stream=false"
        )
    cap = hub.settings.admission.max_inflight_per_connection
    if len(session.requests) >= cap:
        return hub.refused(
            req, ErrorCode.OVERLOADED, f"at most {cap} requests in flight per connection", retry, "inflight"
        )
    refused = hub.catalog.admission(req.task)
    if refused is not None:
        code = ErrorCode.UNAVAILABLE if refused.reason == "unavailable" else ErrorCode.OVERLOADED
        return hub.refused(req, code, refused.message, refused.retry_after_ms, refused.reason)
    return None


def refused(
    hub: Hub, req: Infer, code: ErrorCode, message: str, retry_after_ms: int | None = None, reason: str | None = None
) -> bytes:
    """The refusal frame for a request that is not accepted, counted as its outcome."""
    m = hub.metrics
    # Task names come from clients: only names the registry knows become label values.
    task = req.task if req.task in hub.catalog.registered else "unknown"
    m.requests.labels(task, code).inc()
    m.duration.labels(task, code).observe(0)
    if reason is not None:
        m.refusals.labels(task, reason).inc()
    return refusal(req.id, code, message, retry_after_ms)


def _make_job(hub: Hub, session: Session, req: Infer) -> Job:
    d = hub.settings.deadlines
    budget = min(req.options.deadline_ms or d.default_ms, d.max_ms)
    now = now_ms()
    options = req.options.model_dump(exclude_none=True, exclude={"stream", "deadline_ms"})
    return Job(
        job_id=f"{hub.job_ids_from}{next(hub.job_ids):x}",
        request_id=req.id,
        owner=session.identity,
        session=session.id,
        task=req.task,
        input=req.input,
        options=options,
        stream=req.options.stream,
        deadline_ms=now + budget,
        enqueued_ms=now,
        reply_to=hub.reply_stream,
        # Deterministic per (identity, request id): a re-run after a crash reproduces the same output.
        seed=zlib.crc32(f"{session.identity}\x00{req.id}".encode()),
    )


async def enqueue_new(hub: Hub, session: Session, req: Infer, job: Job, received: float) -> None:
    s = hub.settings.sessions
    k = hub.keys
    accepted = encode(Accepted(id=job.request_id, task=job.task, deadline_ms=job.deadline_ms))
    admitted: list[Pending] = []

    def then(res: Any) -> None:
        if isinstance(res, Exception):
            log.warning("submit.failed", request_id=job.request_id, error=type(res).__name__)
            if isinstance(res, RedisConnectionError | RedisTimeoutError):  # retried on a fresh connection too
                hub.catalog.mark_unreachable()
            retry = hub.settings.admission.retry_after_ms
            msg = "the queue backend is unreachable"
            session.send(hub.refused(req, ErrorCode.UNAVAILABLE, msg, retry, "unavailable"))
            return
        status = res[0].decode()
        if status == "new":
            log.debug("request.accepted", request_id=job.request_id, trace_id=trace_id_of(job.headers), task=job.task)
            p = Pending(job=job, session=session, received=received, entry_id=res[1].decode())
            hub.track(p)
            admitted.append(p)
            hub.catalog.note_enqueued(job.task)
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
        elif status == "inflight" and res[3] and (session.identity, job.request_id) not in hub.pending:
            _adopt_admitted(hub, session, res, received)
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
    await hub.framelog.submit(session.id, hub.submit_script, keys, args, then)
    if admitted and session.conn is None and hub.sessions.get(session.id) is not session:
        # The session ended while SUBMIT ran (a clean close, the fair scheduler submitting for it): its end
        # cancelled what it tracked, and this request was not tracked yet.
        await hub.cancel(admitted[0], notify=False)


def _adopt_admitted(hub: Hub, session: Session, res: Any, received: float) -> None:
    """Admitted by an earlier run of SUBMIT whose answer never came back (the connection dropped and the Redis
    client sent the pipeline again): track the stored job and send its `accepted` frame, as for a new one."""
    stored = Job.model_validate_json(res[3])
    hub.track(Pending(job=stored, session=session, received=received, entry_id=res[1].decode()))
    accepted = Accepted(id=stored.request_id, task=stored.task, deadline_ms=stored.deadline_ms)
    session.deliver(int(res[2]), encode(accepted))
