"""Worker replies: each logged in its session's log (in order within a request), then delivered to the socket this
gateway holds for it, or forwarded to the gateway that holds its session. A final frame ends its request."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from rtai_gateway import ending
from rtai_gateway.session_log import is_repeat, logged_body
from rtai_protocol import Chunk, Error, ErrorCode, Forward, Reply, Result, encode
from rtai_telemetry.logging import get_logger

if TYPE_CHECKING:
    from rtai_gateway.hub import Hub

log = get_logger("rtai_gateway.worker_replies")

FORWARDING_KEPT = 4096
"""At most this many finals remembered as logged new here while their forward is not written (`Hub.finals_forwarding`):
a reader failing for long keeps the oldest only as long as there is room."""

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


async def handle(hub: Hub, replies: list[Reply], *, drop_rejected: bool = False) -> None:
    """Log a batch of worker replies (pipelined, in order), deliver them, forward those another gateway holds.
    Raises if Redis failed, so the reader reads the same replies again (the log scripts drop repeats): an outage,
    a lost connection or a passing refusal (out of memory, a read-only master) raises as it is; a reply Redis
    refused to log for good (an error in the script, a key of the wrong type: `refused_for_good`) raises
    `RepliesRejected`. With `drop_rejected` those are logged and dropped instead, so that one reply Redis refuses
    for good cannot hold up every reply behind it."""
    forwards: list[tuple[str, bytes]] = []
    failures, rejected, held = await _log_replies(hub, replies, forwards, in_order=True)
    if failures:
        raise failures[0]
    if rejected and not drop_rejected:
        raise RepliesRejected(rejected)
    if held:
        # Held back behind a chunk that is not logged and will not be: Redis refused it for good (dropped below),
        # or its request's state vanished between the two ops. Nothing will come before them now.
        failures, again, _ = await _log_replies(hub, held, forwards, in_order=False)
        if failures:
            raise failures[0]
        if again and not drop_rejected:
            raise RepliesRejected(again)
        rejected += again
    for r, e in rejected:
        log.error("reply.rejected", request_id=r.request_id, session=r.session, kind=r.kind, error=str(e)[:200])
        hub.metrics.replies_rejected.inc()
    if forwards:
        await hub.forward(forwards)
    if hub.finals_forwarding:
        for r in replies:
            hub.finals_forwarding.pop((r.owner, r.request_id), None)


async def _log_replies(
    hub: Hub, replies: list[Reply], forwards: list[tuple[str, bytes]], *, in_order: bool
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
                _after_logged(hub, r, logged_body(res, body), kind, seq, is_repeat(res), holder, forwards)

        key = (r.owner, r.request_id)
        after = last_chunk.get(key) if in_order else None
        if kind == "chunk":
            last_chunk[key] = max(r.index, last_chunk.get(key, r.index))
        session = hub.sessions.get(r.session)
        logged.append(
            hub.session_log.append(session, r.session, r.owner, r.request_id, body, kind, r.index, then, after)
        )
    for done in logged:  # on several lanes: each may finish first
        await done
    return failures, rejected, held


def _after_logged(
    hub: Hub,
    r: Reply,
    body: bytes,
    kind: str,
    seq: int,
    repeat: bool,
    holder: str,
    forwards: list[tuple[str, bytes]],
) -> None:
    p = hub.pending.get((r.owner, r.request_id))
    if p is not None:
        if kind == "chunk" and not p.first_chunk_seen:
            p.first_chunk_seen = True
            hub.metrics.first_chunk.labels(p.job.task).observe(time.monotonic() - p.received)
        if kind == "final":
            ending.finished(hub, p, "ok" if r.kind == "result" else (r.code or ErrorCode.INTERNAL), r.headers)
    if repeat and hub.finals_forwarding and (r.owner, r.request_id) in hub.finals_forwarding:
        repeat = False  # logged new here by a read whose forward failed; the session may have come here since
    if holder and holder != hub.gateway_id:
        # Another gateway holds the session: forwarded every time, a repeat too (a batch read again because the
        # forward failed), since only the holder knows what its socket got (it drops a second final).
        if kind == "final" and not repeat:
            hub.finals_forwarding[(r.owner, r.request_id)] = None
            if len(hub.finals_forwarding) > FORWARDING_KEPT:
                del hub.finals_forwarding[next(iter(hub.finals_forwarding))]
        forward = Forward(
            session=r.session,
            seq=seq,
            frame=body.decode(),
            owner=r.owner,
            request_id=r.request_id,
            final=kind == "final",
            repeat=repeat,
        )
        forwards.append((hub.keys.replies(holder), encode(forward)))
        return
    session = hub.sessions.get(r.session)
    if session is None or session.conn is None:
        return  # in the log, for the replay of a resume
    if kind == "final":
        session.deliver_final(r.request_id, seq, body, repeat=repeat)
    else:
        session.deliver(seq, body)


def _frame_of(r: Reply) -> tuple[bytes, str]:
    """The client frame (without seq) for a worker reply, and its log kind."""
    if r.kind == "chunk":
        return encode(Chunk(id=r.request_id, index=r.index, data=r.data)), "chunk"
    if r.kind == "result":
        return encode(Result(id=r.request_id, output=r.data)), "final"
    return encode(Error(id=r.request_id, code=r.code or ErrorCode.INTERNAL, message=r.message or "")), "final"
