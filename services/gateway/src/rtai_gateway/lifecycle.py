"""Sessions beginning, resuming, detaching and ending; requests cancelled; in-flight work re-submitted.

Resume works from any gateway: the session's numbered frames are in Redis (`session log`), its unfinished requests too
(`session inflight`). The gateway that takes a session over replays the log after the client's last seq, and re-submits
requests whose original gateway is gone, under the same job id (workers run jobs at least once; the log keeps exactly
one final frame per request).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from rtai_gateway.connection import Connection
from rtai_gateway.hub import Hub
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session, new_session_id
from rtai_protocol import ErrorCode, Hello, Job, now_ms
from rtai_protocol.codec import decode_internal
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.lifecycle")

CLEAN_CLOSE_CODES = frozenset({1000, 1001})
LAST_SEQ_SLACK = 100_000
"""How far a resuming client's last seq may be above the session's numbering in Redis: a failover to a lagging replica
loses the last increments and log entries (the frames the client already has), never this many."""


def anonymous_identity(session_id: str) -> str:
    """Without authentication each session is its own user, and its unguessable id is the credential to resume it."""
    return f"anon:{session_id}"


async def open_session(hub: Hub, conn: Connection, identity: str | None, hello: Hello | None) -> tuple[Session, bool]:
    """Attach a socket to a new session, or to the one `hello` names if it is this identity's.

    Returns (session, resumed).

    `identity` is the authenticated subject, or None for anonymous connections.
    """
    if hello is not None and hello.session:
        claimed = identity if identity is not None else anonymous_identity(hello.session)
        session = await _resume(hub, conn, claimed, hello.session, hello.last_seq)
        if session is not None:
            return session, True
    session_id = new_session_id()
    session = Session(
        id=session_id,
        identity=identity if identity is not None else anonymous_identity(session_id),
        conn=conn,
        fill_gap=hub.gap_filler,
    )
    hub.sessions[session.id] = session
    try:
        await _claim(hub, session)
    except BaseException:
        del hub.sessions[session.id]  # the socket fails with it: nothing else would ever remove it
        raise
    return session, False


async def _claim(hub: Hub, session: Session) -> None:
    """Name this gateway as the session's holder, and raise its numbering to what the client has (CLAIM_SESSION)."""
    keys = [hub.keys.session_meta(session.id), hub.keys.session_seq(session.id)]
    args: list[str | int] = [session.identity, hub.gateway_id, hub.settings.sessions.ttl_s, session.delivered]
    await hub.claim_session(keys=keys, args=args)


async def _resume(hub: Hub, conn: Connection, identity: str, session_id: str, last_seq: int) -> Session | None:
    k = hub.keys
    async with hub.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(k.session_meta(session_id))
        pipe.get(k.session_seq(session_id))
        pipe.xrevrange(k.session_log(session_id), count=1)
        meta, counter, top = await pipe.execute()
    if not meta or meta.get(b"identity", b"").decode() != identity:
        # Unknown, expired, or someone else's: start fresh without saying which (no oracle for guessing tokens).
        log.info("session.resume_refused")
        return None
    numbered = max(int(counter or 0), int(top[0][0].split(b"-")[0]) if top else 0)
    if last_seq > numbered + LAST_SEQ_SLACK:
        # A seq the session never reached. Taken as the floor for new numbers, it would push them past what the log's
        # entry ids can hold; the client is confused (or probing): a fresh session puts it right.
        log.warning("session.resume_refused", reason="last_seq_ahead", last_seq=last_seq, numbered=numbered)
        return None
    session = hub.sessions.get(session_id)
    if session is None:
        session = Session(id=session_id, identity=identity, fill_gap=hub.gap_filler)
        hub.sessions[session_id] = session
    elif session.conn is not None and session.conn is not conn:
        session.conn.close(1008, "session resumed on another connection")
    session.conn = conn
    session.detached_at = None
    hub.detached.pop(session_id, None)
    session.delivered = last_seq
    # Live frames wait in `held` until replay() has sent the log: order is by seq, whatever arrives first.
    session.replaying = True
    try:
        await _claim(hub, session)
    except BaseException:
        # Detached again, so that its grace and the reaper apply (the socket fails with this error); frames held
        # for the replay are in the log, for the next resume.
        await detach(hub, session, None)
        session.end_replay()
        raise
    return session


async def replay(hub: Hub, session: Session) -> None:
    """Send a resumed session's logged frames after the client's last seq, then take over its unfinished requests."""
    try:
        entries = await hub.logged_after(session)
        for seq, frame in entries:
            session.deliver_replay(seq, frame)
        await _take_over_inflight(hub, session)
    finally:
        session.end_replay()
    log.info("session.resumed", session=session.id, replayed=len(entries))


async def _take_over_inflight(hub: Hub, session: Session) -> None:
    """Make this gateway responsible for the session's unfinished requests."""
    raw: Any = await hub.redis.hgetall(hub.keys.session_inflight(session.id))
    # Every request in the snapshot is tracked before anything else is awaited: a final its gateway logs from now on
    # comes forwarded, and ends it here. One logged between the snapshot and the tracking (its forward handled while
    # the snapshot's reply was on its way) is found by the check below.
    taken: list[Pending] = []
    for rid_b, job_b in raw.items():
        try:
            job = decode_internal(job_b)
        except ValueError:
            continue
        if not isinstance(job, Job):
            continue
        tracked = hub.pending.get((job.owner, rid_b.decode()))
        if tracked is not None:
            # Still tracked here from before the session left this gateway: its frames go to this socket again.
            tracked.session = session
            session.requests.add(job.request_id)
            continue
        pending = Pending(job=job, session=session, received=time.monotonic())
        hub.track(pending)
        taken.append(pending)
    if not taken:
        return
    async with hub.redis.pipeline(transaction=False) as pipe:
        for p in taken:
            pipe.hget(hub.keys.request(p.job.owner, p.job.request_id), "final")
            pipe.hget(hub.keys.request(p.job.owner, p.job.request_id), "final_seq")
        finals = await pipe.execute()
    for i, p in enumerate(taken):
        final, final_seq = finals[2 * i], finals[2 * i + 1]
        if final is not None:
            # Logged after the snapshot (a final logged before it leaves the in-flight hash), so never one the
            # client had: its forward may be on its way, or lost with a gateway that died right after logging it.
            # Sent from here (held until the replay ends); the socket drops a second copy by its number.
            if final_seq is not None:
                session.deliver_final(p.job.request_id, int(final_seq), bytes(final))
            hub.end(p)
        elif p.job.reply_to != hub.reply_stream and not await _gateway_alive(hub, p.job.reply_to):
            # Its gateway is gone, and with it the reader of the job's reply stream: run it again, replies to us.
            await resubmit(hub, p)


async def adopt_orphans(hub: Hub) -> None:
    """Requests taken over from a gateway that was still alive then (draining, say) wait for it to forward their
    replies. Once it is gone nobody reads its reply stream: run them again, replies to this gateway. Also sends again
    the jobs `resubmit_all` could not. Called with the heartbeat; costs nothing while this gateway holds no such
    request. A failed re-submission raises (the heartbeat retries with backoff) and leaves the request as it was, so
    the next pass tries it again."""
    alive: dict[str, bool] = {}
    for p in [p for p in hub.pending.values() if p.resend_due or p.job.reply_to != hub.reply_stream]:
        if hub.pending.get(p.key) is not p:
            continue  # ended while an earlier one awaited
        origin = p.job.reply_to
        if not p.resend_due:
            if origin not in alive:
                alive[origin] = await _gateway_alive(hub, origin)
            if alive[origin]:
                continue
            log.info("inflight.adopted", request_id=p.job.request_id)
        await resubmit(hub, p)


async def _gateway_alive(hub: Hub, reply_stream: str) -> bool:
    gateway_id = reply_stream.rsplit(":", 1)[-1]
    return bool(await hub.redis.exists(hub.keys.gateway_alive(gateway_id)))


async def resubmit(hub: Hub, p: Pending) -> None:
    """Enqueue a job again under the same id (its first copy may be lost), replies to this gateway.

    The request is changed only once the job is in the stream: a failed XADD leaves it as it was (replies to its
    gateway, or due for a resend), so that `adopt_orphans` tries again instead of waiting for replies nobody sends."""
    job = p.job.model_copy(update={"reply_to": hub.reply_stream, "attempt": p.job.attempt + 1})
    entry: Any = await hub.redis.xadd(
        hub.keys.jobs(job.task),
        {"m": orjson.dumps(job.model_dump(mode="json"))},
        maxlen=hub.settings.sessions.jobs_maxlen,
        approximate=True,
    )
    p.job = job
    p.entry_id = entry.decode()
    p.resend_due = False
    hub.metrics.resubmits.labels(job.task).inc()


async def resubmit_all(hub: Hub) -> None:
    """After the Redis node changed (failover or restart), every unfinished job may be lost: submit each again. One
    that fails is marked for the heartbeat's `adopt_orphans` to send again (this runs once per node change)."""
    pending = [p for p in list(hub.pending.values()) if p.job.deadline_ms > now_ms()]
    log.warning("inflight.resubmit", count=len(pending))
    for p in pending:
        try:
            await resubmit(hub, p)
        except Exception as e:
            p.resend_due = True
            log.warning("inflight.resubmit_failed", request_id=p.job.request_id, error=type(e).__name__)


async def detach(hub: Hub, session: Session, close_code: int | None) -> None:
    """The socket is gone. A clean close cancels the session's work; otherwise it waits for a resume."""
    session.conn = None
    session.detached_at = time.monotonic()
    hub.detached.pop(session.id, None)  # re-inserted at the end: the dict stays in detach order
    hub.detached[session.id] = session
    if close_code in CLEAN_CLOSE_CODES or hub.settings.sessions.detach_grace_s == 0:
        await end_session(hub, session)


async def end_session(hub: Hub, session: Session) -> None:
    """Cancel a detached session's requests and forget it. A request admitted while a cancel awaits (the fair
    scheduler's SUBMIT was on its way) is cancelled too; one admitted after the session is forgotten is cancelled by
    `admission.enqueue_new`."""
    detached_at = session.detached_at
    seen: set[str] = set()
    while todo := [rid for rid in session.requests if rid not in seen]:
        for rid in todo:
            if session.conn is not None or session.detached_at != detached_at:
                return  # resumed while a cancel awaited: the rest belong to the new socket (and its grace)
            seen.add(rid)
            p = hub.pending.get((session.identity, rid))
            if p is not None and p.session is session:
                await hub.cancel(p, notify=False)
    if session.conn is None and session.detached_at == detached_at:
        hub.sessions.pop(session.id, None)
        hub.detached.pop(session.id, None)


async def reap(hub: Hub) -> None:
    """Expire deadlines and end sessions whose grace for a resume ran out. Called periodically."""
    for hook in hub.reap_hooks:
        hook()
    now = now_ms()
    for p in [p for p in hub.pending.values() if p.job.deadline_ms <= now]:
        await hub.finish_locally(p, ErrorCode.DEADLINE_EXCEEDED, "no result within the request's deadline")
    # Detach order is expiry order (one grace for all): stop at the first session still within it.
    expired_before = time.monotonic() - hub.settings.sessions.detach_grace_s
    expired: list[Session] = []
    for session in hub.detached.values():
        if session.conn is None and session.detached_at is not None and session.detached_at > expired_before:
            break
        expired.append(session)
    for session in expired:
        detached_at = session.detached_at
        if session.conn is None and session.requests and await _resumed_elsewhere(hub, session):
            if session.conn is None and session.detached_at == detached_at and hub.sessions.get(session.id) is session:
                _hand_over(hub, session)
            continue
        if session.detached_at != detached_at:
            continue  # resumed and dropped again while Redis was asked: a new grace began
        hub.detached.pop(session.id, None)
        if session.conn is None:  # not resumed meanwhile (end_session awaits)
            await end_session(hub, session)


def _hand_over(hub: Hub, session: Session) -> None:
    """Let go of a session another gateway holds now. Its requests went with it: the new holder tracks them, and this
    gateway forwards the replies of those it runs (cancelling them would stop work the client is waiting for); they
    stay tracked here until they finish or expire. Those it had taken over from their own gateway (still alive, their
    replies go there) are that gateway's to forward to the new holder: tracked here, they would wait for a final that
    never comes here, hold a drain, and be re-run if that gateway dies."""
    hub.detached.pop(session.id, None)
    del hub.sessions[session.id]
    for rid in list(session.requests):
        p = hub.pending.get((session.identity, rid))
        if p is not None and p.session is session and p.job.reply_to != hub.reply_stream:
            hub.end(p)
    log.info("session.handed_over", session=session.id, requests=len(session.requests))


async def _resumed_elsewhere(hub: Hub, session: Session) -> bool:
    """Another gateway holds the session now (a Redis error propagates: the session stays detached and the next pass
    asks again)."""
    holder: Any = await hub.redis.hget(hub.keys.session_meta(session.id), "gateway")
    return holder is not None and holder.decode() != hub.gateway_id
