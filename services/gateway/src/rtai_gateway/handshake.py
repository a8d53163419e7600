"""Everything between a socket arriving and its first ordinary frame: origin, capacity, credentials.

Refusals before `accept` become HTTP 403 (a browser sees only a failed connection); later ones send an `error`
frame with a documented code, then close with a documented close code, so clients can tell what to fix.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.websockets import WebSocket

from rtai_gateway.admission import refusal
from rtai_gateway.auth import SUBPROTOCOL, AuthError, token_from_handshake
from rtai_gateway.connection import WS_1008_POLICY_VIOLATION, WS_1013_TRY_AGAIN_LATER, Connection
from rtai_gateway.guard import Guard
from rtai_gateway.origin import origin_allowed
from rtai_gateway.runtime import Runtime
from rtai_protocol import Auth, ErrorCode, ProtocolError, decode_client_frame
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.handshake")


async def receive(websocket: WebSocket, timeout_s: float) -> dict[str, Any] | None:
    """The next ASGI message, or None when nothing came within `timeout_s` (cancelling a receive loses nothing:
    uvicorn queues messages and hands them out one at a time)."""
    try:
        async with asyncio.timeout(timeout_s):
            return dict(await websocket.receive())
    except TimeoutError:
        return None


def policy_close(guard: Guard, conn: Connection, code: int, reason: str, frame: bytes | None, text: str) -> int:
    guard.metrics.policy_closes.labels(reason).inc()
    if frame is not None:
        conn.offer(frame)
    conn.close(code, text)
    return code


async def check_origin(rt: Runtime, guard: Guard, websocket: WebSocket) -> bool:
    """False (and an HTTP 403) for a browser page on an origin that is not allowed."""
    origin = websocket.headers.get("origin")
    if origin_allowed(origin, websocket.headers.get("host"), rt.settings.allowed_origins):
        return True
    guard.metrics.policy_closes.labels("origin").inc()
    log.info("ws.origin_refused", origin=(origin or "")[:200])
    await websocket.close(WS_1008_POLICY_VIOLATION)  # before accept: uvicorn answers 403
    return False


def subprotocol_for(websocket: WebSocket) -> str | None:
    """Echo `rtai.v1` when offered: a browser that offered subprotocols fails the connection unless one comes back,
    and the `bearer.<token>` entry must never be echoed (it would land in every proxy's logs)."""
    return SUBPROTOCOL if SUBPROTOCOL in (websocket.scope.get("subprotocols") or []) else None


def over_capacity(rt: Runtime, guard: Guard, conn: Connection) -> int | None:
    if len(rt.connections) <= rt.settings.limits.max_connections:
        return None
    msg = "this gateway is at its connection limit: retry later or elsewhere"
    frame = refusal(None, ErrorCode.OVERLOADED, msg, rt.settings.admission.retry_after_ms)
    return policy_close(guard, conn, WS_1013_TRY_AGAIN_LATER, "gateway_full", frame, "gateway full")


async def authenticate(
    rt: Runtime, guard: Guard, websocket: WebSocket, conn: Connection
) -> tuple[str | None, int | None]:
    """(identity, None) when the socket may proceed (identity None: auth is off); (None, close code) when refused."""
    auth = guard.auth
    if not auth.enabled:
        return None, None
    s = rt.settings.auth
    token = token_from_handshake(
        websocket.scope.get("subprotocols") or [],
        websocket.headers,
        websocket.query_params,
        allow_query=s.allow_query_token,
    )
    if token is None:
        token_or_close = await _auth_frame(guard, websocket, conn, s.timeout_s)
        if isinstance(token_or_close, int):
            return None, token_or_close
        token = token_or_close
    try:
        principal = auth.authenticate(token)
    except AuthError as e:
        guard.metrics.auth_failures.labels(e.reason).inc()
        log.info("ws.auth_refused", reason=e.reason)
        frame = refusal(None, ErrorCode.UNAUTHENTICATED, e.message)
        return None, policy_close(guard, conn, WS_1008_POLICY_VIOLATION, "unauthenticated", frame, "unauthenticated")
    identity = principal.identity
    if not guard.users.acquire(identity):
        limit = guard.users.limit
        frame = refusal(None, ErrorCode.OVERLOADED, f"at most {limit} connections per user on this gateway")
        code = policy_close(guard, conn, WS_1008_POLICY_VIOLATION, "user_connections", frame, "too many connections")
        return None, code
    return identity, None


async def _auth_frame(guard: Guard, websocket: WebSocket, conn: Connection, timeout_s: float) -> str | int:
    """The token of a first `auth` frame, or the close code when it did not come."""
    msg = await receive(websocket, timeout_s)
    if msg is None:
        guard.metrics.auth_failures.labels("timeout").inc()
        frame = refusal(None, ErrorCode.UNAUTHENTICATED, f"no credentials within {timeout_s:g}s")
        return policy_close(guard, conn, WS_1008_POLICY_VIOLATION, "auth_timeout", frame, "authentication timeout")
    if msg["type"] == "websocket.disconnect":
        return int(msg.get("code") or 1005)
    text = msg.get("text")
    frame_obj = None
    if text is not None:
        try:
            frame_obj = decode_client_frame(text, max_depth=4)
        except ProtocolError:
            frame_obj = None
    if isinstance(frame_obj, Auth):
        return frame_obj.token
    guard.metrics.auth_failures.labels("missing").inc()
    msg_text = "send credentials first: an `auth` frame, the `bearer.<token>` subprotocol or an Authorization header"
    frame = refusal(None, ErrorCode.UNAUTHENTICATED, msg_text)
    return policy_close(guard, conn, WS_1008_POLICY_VIOLATION, "unauthenticated", frame, "unauthenticated")
