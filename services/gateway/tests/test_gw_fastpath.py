"""`/v1/ws` goes straight to the WebSocket endpoint; everything else (HTTP on any path, WebSockets elsewhere) still
goes to FastAPI."""

from __future__ import annotations

from typing import Any

from starlette.websockets import WebSocket

from rtai_gateway.fastpath import WebSocketFastPath


async def test_only_websockets_on_its_path_skip_the_app() -> None:
    seen: list[tuple[str, str, str]] = []

    async def endpoint(ws: WebSocket) -> None:
        seen.append(("endpoint", ws.scope["type"], ws.scope["path"]))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(("app", scope["type"], scope["path"]))

    async def receive() -> Any:
        raise AssertionError("nothing is read here")

    async def send(_message: Any) -> None:
        raise AssertionError("nothing is sent here")

    fast = WebSocketFastPath(app, "/v1/ws", endpoint)
    for scope in (
        {"type": "websocket", "path": "/v1/ws"},
        {"type": "websocket", "path": "/api/v1/ws", "root_path": "/api"},
        {"type": "websocket", "path": "/v1/other"},
        {"type": "http", "path": "/v1/ws"},
        {"type": "http", "path": "/healthz"},
    ):
        await fast(scope, receive, send)
    assert seen == [
        ("endpoint", "websocket", "/v1/ws"),
        ("endpoint", "websocket", "/api/v1/ws"),
        ("app", "websocket", "/v1/other"),
        ("app", "http", "/v1/ws"),
        ("app", "http", "/healthz"),
    ]
