"""The WebSocket endpoint: one receive loop per socket, frames parsed strictly, every refusal a documented error.

Order of checks: draining (1012), origin (403), capacity (1013), credentials (1008), then per frame: rate limit
(`rate_limited`), binary/shape/depth (`invalid_request`), then fair admission. Silence closes the socket: no frame
within `first_message_timeout_s` (1008), or nothing in flight and no frame within `idle_timeout_s` (1000).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import orjson
from redis.exceptions import RedisError
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtai_gateway import handshake, lifecycle
from rtai_gateway.admission import refusal
from rtai_gateway.connection import (
    WS_1008_POLICY_VIOLATION,
    WS_1012_SERVICE_RESTART,
    WS_1013_TRY_AGAIN_LATER,
    Connection,
)
from rtai_gateway.guard import Guard
from rtai_gateway.limits import TokenBucket
from rtai_gateway.runtime import Runtime
from rtai_gateway.session import Session
from rtai_protocol import (
    Auth,
    Cancel,
    ErrorCode,
    Hello,
    Infer,
    ProtocolError,
    Welcome,
    decode_client_frame,
    encode,
)
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.ws")

WS_1000_NORMAL = 1000


@dataclass(eq=False)
class _Socket:
    rt: Runtime
    guard: Guard
    websocket: WebSocket
    conn: Connection
    identity: str | None = None
    session: Session | None = None


async def websocket_endpoint(websocket: WebSocket) -> None:
    rt: Runtime = websocket.state.rt
    guard: Guard = websocket.state.guard
    if rt.draining:
        # Accepted first: a close before the accept is an HTTP 403 to the client (a 1006 to it), which does not say
        # "reconnect elsewhere and resume" as 1012 does.
        await websocket.accept(subprotocol=handshake.subprotocol_for(websocket))
        await websocket.close(WS_1012_SERVICE_RESTART, "gateway restarting: reconnect")
        return
    if not await handshake.check_origin(rt, guard, websocket):
        return
    await websocket.accept(subprotocol=handshake.subprotocol_for(websocket))
    metrics = rt.metrics
    conn = Connection(websocket, rt.settings.limits.send_queue_frames, on_slow_close=metrics.slow_closes.inc)
    rt.connections.add(conn)
    metrics.connections.inc()
    sock = _Socket(rt, guard, websocket, conn)
    close_code: int | None = None
    try:
        close_code = handshake.over_capacity(rt, guard, conn)
        if close_code is None:
            sock.identity, close_code = await handshake.authenticate(rt, guard, websocket, conn)
        if close_code is None:
            close_code = await _serve(sock)
    except WebSocketDisconnect as e:
        close_code = e.code
    except Exception:
        log.exception("ws.crashed")
        close_code = 1011
        conn.close(1011, "internal error")
    finally:
        metrics.connections.dec()
        rt.connections.discard(conn)
        if sock.identity is not None:
            guard.users.release(sock.identity)
        session = sock.session
        if session is not None and session.conn is conn:
            with contextlib.suppress(Exception):
                await lifecycle.detach(rt.hub, session, close_code)
        await conn.aclose()


async def _serve(sock: _Socket) -> int:
    rt, guard, conn = sock.rt, sock.guard, sock.conn
    limits = rt.settings.limits
    bucket = TokenBucket(limits.messages_per_s, limits.message_burst)
    seen_frame = False
    while True:
        msg = await handshake.receive(
            sock.websocket, limits.idle_timeout_s if seen_frame else limits.first_message_timeout_s
        )
        if msg is None:
            if not seen_frame:
                why = f"no frame within {limits.first_message_timeout_s:g}s"
                frame = refusal(None, ErrorCode.INVALID_REQUEST, why)
                return handshake.policy_close(
                    guard, conn, WS_1008_POLICY_VIOLATION, "first_message_timeout", frame, why
                )
            s = sock.session
            if s is not None and (s.requests or guard.scheduler.waiting_for(s)):
                continue  # waiting for results is not idling
            return handshake.policy_close(guard, conn, WS_1000_NORMAL, "idle", None, "idle timeout")
        if msg["type"] == "websocket.disconnect":
            return int(msg.get("code") or 1005)
        seen_frame = True
        text: str | None = msg.get("text")
        if not bucket.take():
            guard.metrics.rate_limited.inc()
            conn.offer(
                refusal(
                    _request_id_of(text),
                    ErrorCode.RATE_LIMITED,
                    f"at most {limits.messages_per_s:g} frames per second per connection",
                    bucket.retry_after_ms(),
                )
            )
            continue
        if text is None:
            rt.metrics.invalid_frames.labels("binary").inc()
            conn.offer(
                refusal(None, ErrorCode.INVALID_REQUEST, "binary frames are not accepted: send JSON text frames")
            )
            continue
        close_code = await _handle_text(sock, text)
        if close_code is not None:
            return close_code
        guard.note_send_queue(conn.queued)


async def _handle_text(sock: _Socket, text: str) -> int | None:
    """Handle one text frame; a close code when the socket is being closed because of it."""
    rt, conn = sock.rt, sock.conn
    try:
        frame = decode_client_frame(text, max_depth=rt.settings.limits.max_json_depth)
    except ProtocolError as e:
        rt.metrics.invalid_frames.labels("shape").inc()
        conn.offer(refusal(e.request_id, e.code, e.message))
        if sock.session is None and await _begin(sock, None, None) is None:
            return WS_1013_TRY_AGAIN_LATER
        return None
    if isinstance(frame, Auth):
        rt.metrics.invalid_frames.labels("late_auth").inc()
        why = "already authenticated" if sock.guard.auth.enabled else "authentication is off on this gateway"
        conn.offer(refusal(None, ErrorCode.INVALID_REQUEST, why))
        return None
    session = sock.session
    if session is None:
        rid = frame.id if isinstance(frame, Infer | Cancel) else None
        session = await _begin(sock, frame if isinstance(frame, Hello) else None, rid)
        if session is None:
            return WS_1013_TRY_AGAIN_LATER
        if isinstance(frame, Hello):
            return None
    try:
        await _dispatch(sock, session, frame)
    except Exception:
        # The client learns that it failed, never why: the log has the traceback.
        log.exception("ws.frame_failed", frame_type=frame.type)
        sock.guard.metrics.internal_errors.inc()
        rid = frame.id if isinstance(frame, Infer | Cancel) else None
        conn.offer(refusal(rid, ErrorCode.INTERNAL, "internal error"))
    return None


async def _begin(sock: _Socket, hello: Hello | None, request_id: str | None) -> Session | None:
    """Start (or resume) the socket's session; None if the socket is being closed instead. Redis failing meanwhile is
    an outage, not a bug: the client gets `unavailable` (naming the request it sent, if any) and a 1013 close, and
    reconnects later."""
    try:
        sock.session = await _start(sock, hello)
        return sock.session
    except RedisError as e:
        log.warning("ws.session_unavailable", error=type(e).__name__)
        retry = sock.rt.settings.admission.retry_after_ms
        msg = "the session store is unreachable: reconnect and retry"
        sock.conn.offer(refusal(request_id, ErrorCode.UNAVAILABLE, msg, retry))
        sock.conn.close(WS_1013_TRY_AGAIN_LATER, "try again later")
        return None


async def _start(sock: _Socket, hello: Hello | None) -> Session:
    rt = sock.rt
    session, resumed = await lifecycle.open_session(rt.hub, sock.conn, sock.identity, hello)
    sock.session = session  # from here on the endpoint detaches it however the socket ends, a failed replay included
    welcome = Welcome(
        session=session.id,
        resumed=resumed,
        last_seq=session.delivered,
        gateway=rt.settings.gateway_id,
        max_frame_bytes=rt.settings.limits.max_frame_bytes,
    )
    sock.conn.offer(encode(welcome))
    log.info("ws.session", session=session.id, resumed=resumed)
    if resumed:
        await lifecycle.replay(rt.hub, session)
    return session


async def _dispatch(sock: _Socket, session: Session, frame: Hello | Infer | Cancel) -> None:
    rt = sock.rt
    if isinstance(frame, Infer):
        if rt.draining:
            session.send(
                refusal(
                    frame.id,
                    ErrorCode.UNAVAILABLE,
                    "gateway restarting: reconnect and retry",
                    rt.settings.admission.retry_after_ms,
                )
            )
            return
        await sock.guard.scheduler.submit(session, frame)
    elif isinstance(frame, Cancel):
        waiting = sock.guard.scheduler.cancel_waiting(session, frame.id)
        if waiting is not None:
            session.send(rt.hub.refused(waiting, ErrorCode.CANCELLED, "cancelled by the client"))
            return
        await sock.guard.scheduler.admitted(session, frame.id)
        p = rt.hub.pending.get((session.identity, frame.id))
        if p is None or p.session is not session:
            session.send(refusal(frame.id, ErrorCode.INVALID_REQUEST, "no request with that id is in flight"))
            return
        await rt.hub.cancel(p, notify=True)
    else:
        rt.metrics.invalid_frames.labels("late_hello").inc()
        session.send(refusal(None, ErrorCode.INVALID_REQUEST, "hello must be the first frame of a connection"))


def _request_id_of(text: str | None) -> str | None:
    """The id of a rate-limited frame, when it is cheap to find, so the client knows which request was refused."""
    if text is None or len(text) > 16_384:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None
