"""The WebSocket protocol the gateway's uvicorn runs: uvicorn's sans-I/O one, with a bound on how long a socket may
take to close.

uvicorn closes a socket by flushing it: `transport.close()` returns at once but the connection only ends once every
buffered byte reached the client, and a client that stopped reading never lets that happen. It also waits for the
transport to be writable before it writes a close frame. So a socket the gateway gave up on (1013: the client reads
too slowly; a keepalive ping that got no pong) kept its file descriptor, its buffers and, until the close frame was
written, its place in the gateway's receive loop, for as long as the client kept TCP alive. Here:

- the close frame is written at once, behind whatever is already buffered; uvicorn then goes on reading (and
  discarding) the client's frames until its close reply comes, so the client's own sends never block on us;
- a frame the gateway sends while the socket takes it without waiting is written at once, from the sender's own
  stack (`send_text_now`, offered to the app as the ASGI extension `rtai.send_text_now`), instead of waking the
  socket's writer task and passing the ASGI send path; that was two task switches and a bytes -> str -> bytes round
  trip per frame;
- a socket whose closing began `close_timeout_s` ago (the app returned, the keepalive failed, or the server is
  shutting down) and that is still open is aborted: its buffers are dropped and the client sees a reset instead of
  the close frame it did not read. A client that reads gets the close frame and answers it well within that time.
  Counted in `rtai_gateway_aborted_sockets_total`;
- uvicorn's own wait for the client's close reply (`close_timer`, started when the close frame is sent) ends the
  same way, not with uvicorn's graceful `transport.close()`: when the client has not read, but the kernel took the
  last of the transport's buffer, that close hands the unsent bytes to the kernel, which keeps the orphaned socket
  (and them) until it gives up on the peer, and the gateway counted nothing.

Written against uvicorn 0.54's sans-I/O protocol (uv.lock pins it) and its attributes `writable`, `close_timer`,
`disconnected`, `handshake_complete`, `close_sent`, `initial_response`, `conn` (websockets' sans-I/O state machine),
`scope`, `request`, `response`: `tests/integration/test_backpressure.py::test_a_client_that_never_reads_is_cut_off` and
`tests/security/test_keepalive_live.py::test_a_peer_that_never_answers_the_close_frame_is_reset` fail if the first four
change, every WebSocket test if the others do.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any, ClassVar

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.ws_protocol")

SEND_TEXT_NOW = "rtai.send_text_now"
"""The ASGI scope extension holding `BoundedCloseProtocol.send_text_now` (absent under other servers)."""


class BoundedCloseProtocol(WebSocketsSansIOProtocol):
    close_timeout_s: ClassVar[float] = 10.0
    _abort_timer: asyncio.TimerHandle | None = None

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope: Any = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None:
            scope["extensions"][SEND_TEXT_NOW] = self.send_text_now

    def send_text_now(self, data: bytes) -> bool:
        """Write one text frame (UTF-8 bytes) now if the socket takes it without waiting: open, not closing, its
        transport below the high-water mark. False otherwise, and nothing written: the caller queues the frame for
        the ASGI send path, which waits."""
        if (
            self.disconnected
            or not self.handshake_complete
            or self.close_sent
            or self.initial_response is not None
            or not self.writable.is_set()
        ):
            return False
        try:
            self.conn.send_text(data)
        except InvalidState:  # the peer's close frame arrived: the receive side ends the socket
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] != "websocket.close":
            await super().send(message)
            if message["type"] == "websocket.accept" and self.handshake_complete:
                # uvicorn keeps the handshake's request and response (two header maps: ~20 containers) for the
                # socket's life and never reads them again; an idle socket is cheaper for the collector without.
                self.request = self.response = None  # type: ignore[assignment]
            return
        if self.writable.is_set() or not self.handshake_complete:
            await super().send(message)
        else:
            # The client is not reading: uvicorn would wait for it before writing the close frame. Let the frame
            # join the buffer now. super().send() does not suspend once `writable` is set, so no other send can slip
            # through before the flag is back to what the transport last said.
            self.writable.set()
            try:
                await super().send(message)
            finally:
                if not self.disconnected:
                    self.writable.clear()
        if self.close_timer is not None:  # the close frame went out: no close reply within the timeout aborts
            self.close_timer.cancel()
            self.close_timer = self.loop.call_later(self.close_timeout_s, self._abort)

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        self._abort_later()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        self._abort_later()

    def shutdown(self) -> None:
        super().shutdown()
        self._abort_later()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        super().connection_lost(exc)

    def _abort_later(self) -> None:
        if self._abort_timer is None and not self.disconnected:
            self._abort_timer = self.loop.call_later(self.close_timeout_s, self._abort)

    def _abort(self) -> None:
        # Two timers lead here (the close reply's and ours): the first cancels the other, even when both are due in
        # the same turn of the loop, before `connection_lost` marks the socket disconnected.
        for timer in (self._abort_timer, self.close_timer):
            if timer is not None:
                timer.cancel()
        self._abort_timer = self.close_timer = None
        if self.disconnected:
            return
        rt = self.app_state.get("rt")  # the app's lifespan state: uvicorn hands it to each connection
        if rt is not None:
            rt.metrics.aborted_sockets.inc()
        log.info(
            "ws.aborted",
            client=self.client[0] if self.client else None,
            unsent_bytes=self.transport.get_write_buffer_size(),
            detail="still open limits.close_timeout_s after closing began: a client that neither reads nor answers",
        )
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # A transport's abort() only closes the descriptor: the kernel would go on sending what it still
            # buffers, from an orphaned socket, to a peer that does not read it. A zero linger makes the close a
            # reset that drops those bytes too.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()


def with_close_timeout(close_timeout_s: float) -> type[BoundedCloseProtocol]:
    """The protocol class for uvicorn's `ws` option, aborting sockets still open `close_timeout_s` after closing
    began (uvicorn instantiates the class itself, so the setting travels on a subclass)."""
    return type("BoundedCloseProtocol", (BoundedCloseProtocol,), {"close_timeout_s": close_timeout_s})
