"""One WebSocket's outgoing side: frames written at once while the socket takes them, else a bounded send queue
drained by one writer task, started when a frame first has to wait.

A client that does not read fills the kernel's socket buffers, then the transport's up to its high-water mark (the
socket stops being writable), then its queue; instead of buffering without bound (the memory growth users of other
systems complain about) the gateway closes it with 1013 and the client resumes from its last sequence number. That
close does not wait for the client: what is queued is dropped (the client gets it again on resume) and the close
frame is written at once; `ws_protocol` aborts the socket if the client does not read it in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketState

from rtai_gateway.ws_protocol import SEND_TEXT_NOW
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.connection")

WS_1008_POLICY_VIOLATION = 1008
WS_1009_MESSAGE_TOO_BIG = 1009
WS_1011_INTERNAL_ERROR = 1011
WS_1012_SERVICE_RESTART = 1012
WS_1013_TRY_AGAIN_LATER = 1013


class Connection:
    def __init__(self, ws: WebSocket, queue_frames: int, *, on_slow_close: object = None) -> None:
        self.ws = ws
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_frames)
        self.capacity = queue_frames
        self.closed = False
        self.close_code: int | None = None
        self._reason = ""
        self._writer: asyncio.Task[None] | None = None
        self._on_slow_close = on_slow_close
        extensions = ws.scope.get("extensions") or {}
        self._send_now: Callable[[bytes], bool] | None = extensions.get(SEND_TEXT_NOW)
        self._unsent = 0
        """Frames handed to the writer and not yet written: while there are any, a new frame queues behind them."""

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def offer(self, body: bytes) -> bool:
        """Queue a frame; False (and a 1013 close) when the client is too slow to keep up."""
        if self.closed:
            return False
        if self._unsent == 0 and self._send_now is not None and self._send_now(body):
            return True
        try:
            self._queue.put_nowait(body)
            self._unsent += 1
        except asyncio.QueueFull:
            if callable(self._on_slow_close):
                self._on_slow_close()
            self.close(WS_1013_TRY_AGAIN_LATER, "client too slow: resume with your last seq", discard_queued=True)
            return False
        self._start_writer()
        return True

    def _start_writer(self) -> None:
        # Started the first time a frame must wait: a socket whose frames all went out at once never has one (a task
        # and its coroutine fewer per idle socket for the garbage collector to walk).
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def close(self, code: int, reason: str = "", *, discard_queued: bool = False) -> None:
        """Close after the frames already queued (the writer sends the close frame), or, with `discard_queued`, drop
        them and close now (the writer may be stuck on a client that does not read)."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._reason = reason
        # A full queue cannot take the close marker; dropping only some frames would leave a gap below the last seq
        # the client sees, so it drops them all, like a slow client's.
        if discard_queued or self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
            if self._writer is not None:
                # Cancelling a send that waits for the transport to drain writes nothing: no half frame goes out.
                self._writer.cancel()
            self._writer = asyncio.create_task(self._send_close(), name="ws-closer")
            return
        self._queue.put_nowait(None)
        self._start_writer()

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                body = await self._queue.get()
                if body is None:
                    break
                await ws.send_text(body.decode())
                self._unsent -= 1
        except Exception as e:  # the peer vanished mid-send: nothing to do but stop writing
            log.debug("ws.send_failed", error=type(e).__name__)
            self.closed = True
            return
        await self._send_close()

    async def _send_close(self) -> None:
        ws = self.ws
        if ws.application_state == WebSocketState.CONNECTED and ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(self.close_code or 1000, self._reason)

    async def aclose(self) -> None:
        """Stop the writer (after the receive side ended)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
            self._start_writer()
        if self._writer is not None:
            try:
                await asyncio.wait_for(self._writer, timeout=2)
            except (TimeoutError, asyncio.CancelledError):
                self._writer.cancel()
