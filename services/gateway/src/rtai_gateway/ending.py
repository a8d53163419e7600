"""How a request this gateway tracks ends: with its final frame from a worker, or with one the gateway decides itself
(a cancel, a deadline), logged like any final. Either way the request is untracked and its outcome counted once."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from rtai_gateway import relay
from rtai_gateway.pending import Pending
from rtai_gateway.session_log import is_repeat, logged_body
from rtai_protocol import Error, ErrorCode, Forward, encode, now_ms
from rtai_telemetry.logging import get_logger
from rtai_telemetry.tracing import extract_context, trace_id_of

if TYPE_CHECKING:
    from rtai_gateway.hub import Hub

log = get_logger("rtai_gateway.ending")
tracer = trace.get_tracer("rtai_gateway")


def end(hub: Hub, p: Pending) -> None:
    """Stop tracking a request, and give back what it held here (its user's fair slot)."""
    hub.untrack(p)
    for hook in hub.finish_hooks:
        hook(p)


def finished(hub: Hub, p: Pending, outcome: str, headers: dict[str, str] | None = None) -> None:
    hub.end(p)
    elapsed = time.monotonic() - p.received
    log.debug(
        "request.finished",
        request_id=p.job.request_id,
        trace_id=trace_id_of(p.job.headers),
        task=p.job.task,
        outcome=outcome,
        ms=round(elapsed * 1000, 2),
    )
    hub.metrics.requests.labels(p.job.task, outcome).inc()
    hub.metrics.duration.labels(p.job.task, outcome).observe(elapsed)
    if headers:
        with tracer.start_as_current_span(
            "gateway.ws.send", context=extract_context(headers), attributes={"rtai.outcome": outcome}
        ):
            pass


async def cancel(hub: Hub, p: Pending, *, notify: bool) -> None:
    """Remove a queued job or stop a running one; the client (if told) gets a final `cancelled` error."""
    job = p.job
    k = hub.keys
    try:
        async with hub.redis.pipeline(transaction=False) as pipe:
            if p.entry_id:
                pipe.xdel(k.jobs(job.task), p.entry_id)
            pipe.set(k.cancelled(job.job_id), b"1", px=max(job.deadline_ms - now_ms(), 1000))
            pipe.publish(k.cancel_channel, job.job_id)
            await pipe.execute()
    except Exception as e:
        log.warning("cancel.unsignalled", request_id=job.request_id, error=type(e).__name__)
    why = "cancelled by the client" if notify else "cancelled: the client went away"
    await hub.finish_locally(p, ErrorCode.CANCELLED, why)


async def finish_locally(hub: Hub, p: Pending, code: ErrorCode, message: str) -> None:
    """End a request with an error the gateway decides itself (deadline, cancel), through the log like any final."""
    if hub.pending.get(p.key) is not p:
        return  # its final came while the caller awaited something (a cancel's signal, an earlier expiry's log)
    job = p.job
    body = encode(Error(id=job.request_id, code=str(code), message=message))
    finished(hub, p, str(code))

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
        logged, repeat = logged_body(res, body), is_repeat(res)
        if p.session.conn is not None:
            p.session.deliver_final(job.request_id, seq, logged, repeat=repeat)
        final = Forward(session=job.session, seq=seq, frame=logged.decode(), owner=job.owner,
                        request_id=job.request_id, final=True, repeat=repeat)  # fmt: skip
        if job.reply_to != hub.reply_stream:
            tell[job.reply_to] = encode(final)
        if holder and holder != hub.gateway_id:
            tell[hub.keys.replies(holder)] = encode(final)

    await hub.session_log.append(p.session, job.session, job.owner, job.request_id, body, "final", 0, then)
    if tell:
        await relay.tell(hub, job.request_id, tell)
