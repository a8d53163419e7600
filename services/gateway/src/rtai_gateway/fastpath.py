"""The WebSocket endpoint's own entry point, in front of FastAPI's middleware stack.

A socket routed by FastAPI lives inside Starlette's exception middleware, FastAPI's exit-stack middleware, the router
and the endpoint's dependency wrapper: a suspended coroutine per layer for the socket's whole life, and every frame
the gateway sends passes through the exception middleware's `send` wrapper. The endpoint needs none of it (it catches
its own errors and closes with 1011), so `/v1/ws` is handed to it directly; every other path goes to FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket


class WebSocketFastPath:
    def __init__(self, app: ASGIApp, path: str, endpoint: Callable[[WebSocket], Awaitable[None]]) -> None:
        self.app = app
        self.path = path
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # uvicorn's path includes the root path, when the server was given one.
        if scope["type"] == "websocket" and scope["path"] in (self.path, scope.get("root_path", "") + self.path):
            await self.endpoint(WebSocket(scope, receive, send))
            return
        await self.app(scope, receive, send)
