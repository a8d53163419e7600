"""The WebSocket endpoint: one receive loop per socket, frames parsed strictly, every refusal a documented error."""

from __future__ import annotations

import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect

from rtai_gateway import lifecycle
from rtai_gateway.connection import WS_1012_SERVICE_RESTART, Connection
from rtai_gateway.hub import refusal
from rtai_gateway.runtime import Runtime
from rtai_gateway.session import Session
from rtai_protocol import Cancel, ErrorCode, Hello, Infer, ProtocolError, Welcome, decode_client_frame, encode
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.ws")


async def websocket_endpoint(websocket: WebSocket) -> None:
    rt: Runtime = websocket.state.rt
    if rt.draining:
        await websocket.close(WS_1012_SERVICE_RESTART, "gateway restarting: reconnect")
        return
    await websocket.accept()
    metrics = rt.metrics
    conn = Connection(websocket, rt.settings.limits.send_queue_frames, on_slow_close=metrics.slow_closes.inc)
    conn.start()
    rt.connections.add(conn)
    metrics.connections.inc()
    session: Session | None = None
    close_code: int | None = None
    try:
        session, close_code = await _serve(rt, websocket, conn)
    except WebSocketDisconnect as e:
        close_code = e.code
    except Exception:
        log.exception("ws.crashed")
        close_code = 1011
        conn.close(1011, "internal error")
    finally:
        metrics.connections.dec()
        rt.connections.discard(conn)
        if session is not None and session.conn is conn:
            with contextlib.suppress(Exception):
                await lifecycle.detach(rt.hub, session, close_code)
        await conn.aclose()


async def _serve(rt: Runtime, websocket: WebSocket, conn: Connection) -> tuple[Session | None, int | None]:
    limits = rt.settings.limits
    session: Session | None = None
    while True:
        msg = await websocket.receive()
        if msg["type"] == "websocket.disconnect":
            return session, int(msg.get("code") or 1005)
        text = msg.get("text")
        if text is None:
            rt.metrics.invalid_frames.labels("binary").inc()
            conn.offer(
                refusal(None, ErrorCode.INVALID_REQUEST, "binary frames are not accepted: send JSON text frames")
            )
            continue
        try:
            frame = decode_client_frame(text, max_depth=limits.max_json_depth)
        except ProtocolError as e:
            rt.metrics.invalid_frames.labels("shape").inc()
            conn.offer(refusal(e.request_id, e.code, e.message))
            if session is None:
                session = await _start(rt, conn, None)
            continue
        if session is None:
            session = await _start(rt, conn, frame if isinstance(frame, Hello) else None)
            if isinstance(frame, Hello):
                continue
        await _dispatch(rt, session, frame)


async def _start(rt: Runtime, conn: Connection, hello: Hello | None) -> Session:
    session, resumed = await lifecycle.open_session(rt.hub, conn, None, hello)
    welcome = Welcome(
        session=session.id,
        resumed=resumed,
        last_seq=session.delivered,
        gateway=rt.settings.gateway_id,
        max_frame_bytes=rt.settings.limits.max_frame_bytes,
    )
    conn.offer(encode(welcome))
    log.info("ws.session", session=session.id, resumed=resumed)
    if resumed:
        await lifecycle.replay(rt.hub, session)
    return session


async def _dispatch(rt: Runtime, session: Session, frame: Hello | Infer | Cancel) -> None:
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
        await rt.hub.submit(session, frame)
    elif isinstance(frame, Cancel):
        p = rt.hub.pending.get((session.identity, frame.id))
        if p is None or p.session is not session:
            session.send(refusal(frame.id, ErrorCode.INVALID_REQUEST, "no request with that id is in flight"))
            return
        await lifecycle.cancel(rt.hub, p, notify=True)
    else:
        rt.metrics.invalid_frames.labels("late_hello").inc()
        session.send(refusal(None, ErrorCode.INVALID_REQUEST, "hello must be the first frame of a connection"))
