"""The client's WebSocket to a gateway: the handshake, the session's numbers, the reader, reconnecting and resuming.

One socket at a time. It remembers the session token and the highest `seq` seen; after a drop (1012 restart, 1013
slow, network) it reconnects with `Backoff` and sends `hello{session,last_seq}`, so the server replays what was missed.
When the server ends an idle session (close 1000 with nothing in flight) it stays idle and connects again for the next
request. What the frames mean to the requests is its `Handler`'s business.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, WebSocketException

from rtai_client.backoff import Backoff
from rtai_client.errors import ConnectionLost
from rtai_protocol import Accepted, Chunk, Error, Result, Welcome, decode_server_frame

log = logging.getLogger("rtai_client")

HANDSHAKE_ABANDONED = 4000
"""The close code of a socket given up on before its welcome (an application code: not a clean close)."""

State = Literal["idle", "connecting", "open", "reconnecting", "closed"]
FATAL_CLOSE_CODES = frozenset({1008, 1009})
"""Policy violation and message too big: reconnecting would only repeat them."""


class Handler(Protocol):
    """What the connection tells the requests it carries."""

    def on_frame(self, frame: Accepted | Chunk | Result | Error) -> None:
        """A frame that names a request (a numbered one once only)."""

    def on_drop(self) -> None:
        """The socket closed unexpectedly (a reconnect may follow)."""

    async def on_reconnect(self, resumed: bool) -> None:
        """A new socket is open; `resumed`: the server kept the session (else a new one started)."""

    def on_lost(self, exc: ConnectionLost) -> None:
        """The connection is gone for good: closed by the client, not reconnected, or its reader failed."""

    def quiet(self) -> bool:
        """Nothing waits for the server: no request in flight, no cancel still to send."""


class Connection:
    """The socket (one at a time), the session it carries and the task that reads it. Frames that name a request go
    to the `Handler` given to `connect`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        reconnect: bool,
        backoff: Backoff,
        open_timeout: float,
        on_state: Callable[[State], None] | None,
    ) -> None:
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.on_state = on_state
        self.session: str | None = None
        self.last_seq = 0
        self.gateway = ""
        self.max_frame_bytes = 0
        self.state: State = "idle"
        self.reconnects = 0
        self.resumed = False
        self.gen = 0
        """The socket's generation, one more with each socket opened: a request is sent once on each."""
        self.closing = False
        """`close()` was called: the reader does not reconnect, and no request is taken any more."""
        self.welcome: Welcome | None = None
        """The welcome of the socket open now (or last)."""
        self.wanted = False
        """`connect()` succeeded once and `close()` was not called: an idle connection opens again on demand."""
        self._reopening: asyncio.Task[Welcome] | None = None
        self.lost: ConnectionLost | None = None
        """Why the connection is gone for good, if it is (not set by `close()`)."""
        self._ws: ClientConnection | None = None
        self._handler: Handler | None = None
        self._runner: asyncio.Task[None] | None = None
        self._attempt = 0
        """Reconnect attempts since the connection last stayed up `backoff.stable_s`: a server that welcomes and then
        closes every time is retried with growing delays (and given up on), not every few hundred milliseconds."""
        self._background: set[asyncio.Task[Any]] = set()

    async def connect(self, handler: Handler) -> Welcome:
        """Open the socket and start (or, if `session` is set, resume) a session; then read it, handing the frames
        that name a request to `handler`."""
        self._handler = handler
        self._set_state("connecting")
        try:
            welcome = await self._open()
        except BaseException:
            if not self.closing:  # nothing is connected: requests are refused at once, and connect() may be retried
                self._set_state("idle")
            raise
        if self.closing:  # close() ran during the handshake (of a reopen): this socket is not wanted
            ws, self._ws = self._ws, None
            if ws is not None:
                await ws.close()
            raise ConnectionLost("the client was closed", 1000)
        self._set_state("open")
        self.wanted = True
        self._runner = asyncio.create_task(self._run(handler), name="rtai-client")
        self._runner.add_done_callback(self._runner_ended)
        return welcome

    async def ensure_open(self) -> None:
        """Connect again if the server ended the idle session; one socket however many requests ask at once. Raises
        ConnectionLost if that fails (the connection stays idle, and the next request tries again)."""
        while self.state in ("idle", "connecting") and self.wanted and not self.closing and self._handler is not None:
            if self._reopening is None:
                # A task of its own, shielded: a caller that stops waiting does not cut the others' handshake off.
                self._reopening = asyncio.create_task(self.connect(self._handler), name="rtai-client-reopen")
                self._reopening.add_done_callback(self._reopened)
            reopening = self._reopening
            try:
                await asyncio.shield(reopening)
            except asyncio.CancelledError:
                if reopening.cancelled():  # by close(), not this caller's cancellation
                    raise ConnectionLost("the client was closed", 1000) from None
                raise
            except ConnectionLost:
                raise
            except (OSError, TimeoutError, WebSocketException) as e:
                raise ConnectionLost(f"could not connect again to {self.url}: {e!r}") from e

    def _reopened(self, task: asyncio.Task[Welcome]) -> None:
        # Cleared by the task itself: if every caller stopped waiting, a finished reopen left in place would be
        # awaited by the next request, which would then find the connection still idle and never be sent.
        if self._reopening is task:
            self._reopening = None
        if not task.cancelled():
            task.exception()  # each waiter has it; with none left, it is not "never retrieved"

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        """The reader must never die unnoticed: its callers would wait for their timeouts."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("rtai.reader_failed", exc_info=exc)
            self._lose(ConnectionLost(f"the client's reader failed: {exc!r}"))
            if self._ws is not None:  # nobody reads it any more
                self.spawn(self._ws.close())

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background, kept by reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Close normally (code 1000): the server cancels this session's unfinished requests."""
        self.closing = True
        if (reopening := self._reopening) is not None:  # a socket opened after this would outlive the client
            reopening.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reopening
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a reader failure was reported already
                await self._runner
        if self._handler is not None:  # (never connected: no request was taken)
            self._handler.on_lost(ConnectionLost("the client was closed", 1000))
        self._set_state("closed")

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            if self.on_state is not None:
                try:
                    self.on_state(state)
                except Exception:
                    log.exception("rtai.on_state_failed")  # the application's callback must not stop the client

    async def _open(self) -> Welcome:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = await connect(
                self.url, additional_headers=headers, open_timeout=self.open_timeout, max_size=2**24, close_timeout=2
            )
        except InvalidURI as e:  # the SDK's own errors, so a caller handles one family (the CLI prints one line)
            raise ConnectionLost(f"not a gateway URL: {e}") from e
        except InvalidHandshake as e:  # e.g. HTTP 403 (a refused origin) or 503 from a proxy
            raise ConnectionLost(f"the WebSocket handshake with {self.url} failed: {e}") from e
        try:
            hello: dict[str, Any] = {"type": "hello"}
            if self.session:
                hello.update(session=self.session, last_seq=self.last_seq)
            with contextlib.suppress(ConnectionClosed):  # refused at once: the reason is in the frames to read
                await ws.send(json.dumps(hello))
            welcome = await asyncio.wait_for(self._await_welcome(ws), self.open_timeout)
        except BaseException:
            # Not 1000: the gateway takes a normal close as the end of the session and cancels its requests, and
            # this socket may have been resuming that session (its welcome was late, say).
            await ws.close(HANDSHAKE_ABANDONED, "handshake abandoned")
            raise
        if not welcome.resumed:
            self.last_seq = 0  # a new session numbers its frames from 1
        self.session = welcome.session
        self.gateway = welcome.gateway
        self.max_frame_bytes = welcome.max_frame_bytes
        self.resumed = welcome.resumed
        self.welcome = welcome
        self._ws = ws
        self.gen += 1
        return welcome

    async def _await_welcome(self, ws: ClientConnection) -> Welcome:
        refusal: Error | None = None
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else None
                if refusal is not None:  # e.g. unauthenticated, then a 1008 close
                    raise ConnectionLost(f"{refusal.code}: {refusal.message}", code, refusal.code) from e
                reason = e.rcvd.reason if e.rcvd else ""
                raise ConnectionLost(f"closed before welcome ({code} {reason})", code) from e
            try:
                frame = decode_server_frame(raw)
            except ValidationError:
                continue  # a frame type this client does not know: ignored, as the protocol asks
            if isinstance(frame, Welcome):
                return frame
            if isinstance(frame, Error) and frame.id is None:
                refusal = frame
                log.warning("rtai.refused %s: %s", frame.code, frame.message)

    async def _run(self, handler: Handler) -> None:
        """Read frames; after an unexpected close, reconnect and resume (or fail every request in flight)."""
        loop = asyncio.get_running_loop()
        while True:
            ws = self._ws
            assert ws is not None
            opened_at = loop.time()
            try:
                async for raw in ws:
                    self._dispatch(raw, handler)
            except ConnectionClosed:
                pass
            if self.closing:
                return
            code = ws.close_code
            log.info("rtai.disconnected code=%s reason=%s", code, ws.close_reason)
            handler.on_drop()
            if code == 1000 and self.reconnect and handler.quiet():
                # The server ended the session normally (its idle timeout) with nothing in flight: connect again when
                # there is something to send, not at once (an idle client would hold a socket, and start a new
                # session, every idle timeout for as long as it lives).
                self._ws = None
                self._set_state("idle")
                return
            if not self.reconnect or code in FATAL_CLOSE_CODES:
                self._lose(ConnectionLost(f"connection closed ({code} {ws.close_reason})", code))
                return
            if loop.time() - opened_at >= self.backoff.stable_s:
                self._attempt = 0
            if (lost := await self._reconnect(code, handler)) is not None:
                self._lose(lost)
                return

    def _lose(self, exc: ConnectionLost) -> None:
        self.lost = exc
        assert self._handler is not None  # set by connect(), which started the reader
        self._handler.on_lost(exc)
        self._set_state("closed")

    async def _reconnect(self, code: int | None, handler: Handler) -> ConnectionLost | None:
        """Reconnect with backoff and resume the session. None once reconnected, else why not: the last refusal the
        gateway gave keeps its close code and error code (a reconnect refused `unauthenticated` with 1008 says so, not
        merely that the old connection closed with 1012); a refusal with a fatal close code ends the attempts."""
        self._set_state("reconnecting")
        refusal: ConnectionLost | None = None
        while not self.backoff.exhausted(self._attempt):
            await asyncio.sleep(self.backoff.delay(self._attempt))
            self._attempt += 1
            attempt = self._attempt
            try:
                welcome = await self._open()
            except ConnectionLost as e:
                refusal = e
                if e.close_code in FATAL_CLOSE_CODES:
                    break
                continue
            except (OSError, TimeoutError, WebSocketException) as e:
                log.info("rtai.reconnect_failed attempt=%d error=%s", attempt, type(e).__name__)
                continue
            self.reconnects += 1
            self._set_state("open")
            log.info("rtai.reconnected resumed=%s last_seq=%d", welcome.resumed, self.last_seq)
            await handler.on_reconnect(welcome.resumed)
            return None
        if refusal is None:
            return ConnectionLost(f"could not reconnect after close {code}", code)
        close_code = code if refusal.close_code is None else refusal.close_code  # a refused handshake has none
        lost = ConnectionLost(f"could not reconnect after close {code}: {refusal}", close_code, refusal.code)
        lost.__cause__ = refusal
        return lost

    def _dispatch(self, raw: str | bytes, handler: Handler) -> None:
        try:
            frame = decode_server_frame(raw)
        except ValidationError:
            log.debug("rtai.unknown_frame %s", str(raw)[:200])
            return
        seq = getattr(frame, "seq", None)
        if seq is not None:
            if seq <= self.last_seq:
                return  # already seen (a replay overlap)
            self.last_seq = seq
        if isinstance(frame, Welcome):
            return
        if frame.id is None:
            if isinstance(frame, Error):
                log.warning("rtai.error %s: %s", frame.code, frame.message)
            return
        handler.on_frame(frame)

    async def send(self, frame: dict[str, Any]) -> bool:
        """Send `frame` on the open socket; False if there is none (the reader reconnects and sends unfinished
        requests again)."""
        ws = self._ws
        if ws is None or self.state != "open":
            return False
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            return False  # the reader reconnects and sends unfinished requests again
        return True
