"""The HTTP protocol the gateway's uvicorn runs: uvicorn's own, with a deadline on the request head.

uvicorn arms no timer before a connection's first request. A client that opens TCP and sends nothing, or dribbles its
headers a byte at a time (slowloris), would hold a socket and its buffers for ever, and the per-gateway connection
cap only counts sockets that completed the WebSocket handshake. This protocol closes a connection whose request head
(the WebSocket upgrade request included) is not complete within `limits.handshake_timeout_s`; so does every later
request on a kept-alive HTTP connection (uvicorn's keep-alive timer stops at the first byte of the next request, and
a head dribbled after it would hold the socket as long as the client likes).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.http")


def with_handshake_timeout(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, closing connections whose request head takes longer than `timeout_s`."""

    class HandshakeTimeoutProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(timeout_s, self._head_expired)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:  # the next request on a kept-alive connection: its head gets the same time
                self._head_timer = self.loop.call_later(timeout_s, self._head_expired)

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # Pipelined: this head waits behind a response still being sent (uvicorn stops reading meanwhile).
                self._head_timer = self.loop.call_later(timeout_s, self._head_expired)
                return
            if not self.transport.is_closing():
                log.debug("http.handshake_timeout", client=self.client[0] if self.client else None)
                self.transport.close()

    return HandshakeTimeoutProtocol
