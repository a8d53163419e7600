"""The async Python SDK: one WebSocket to a gateway, reconnected with jittered backoff and resumed from the last seq.

    async with Client("ws://127.0.0.1:8000/v1/ws") as c:
        r = await c.infer("sentiment", "I love it")        # rtai_protocol.Result
        async for chunk in c.stream("generate", "Hello"):   # rtai_protocol.Chunk
            print(chunk.data, end="")

What the client does for you:
- numbers: it remembers the session token and the highest `seq` seen; after a drop (1012 restart, 1013 slow, network)
  it reconnects with `Backoff` and sends `hello{session,last_seq}`, so the server replays what was missed; requests
  without a final frame are sent again under the same id, which the server never runs twice;
- refusals: `overloaded`, `rate_limited` and `unavailable` for requests never accepted are retried after the server's
  `retry_after_ms` (plus jitter), at most `retries` times and only within the request's deadline (`Retry`);
- deadlines: `deadline_ms` goes to the server; the client itself gives up `timeout_grace_s` later (RequestTimeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI, WebSocketException

from rtai_client._calls import Call, Retry, is_refusal
from rtai_client._cancels import NOT_IN_FLIGHT, Cancels
from rtai_client._http import TaskInfo, get_json, http_url, parse_tasks
from rtai_client.backoff import Backoff
from rtai_client.errors import ConnectionLost, RequestError, RequestTimeout, RtaiError, SessionLost
from rtai_client.stream import Stream
from rtai_protocol import Accepted, Chunk, Error, Result, Welcome, decode_server_frame

log = logging.getLogger("rtai_client")

HANDSHAKE_ABANDONED = 4000
"""The close code of a socket given up on before its welcome (an application code: not a clean close)."""

State = Literal["idle", "connecting", "open", "reconnecting", "closed"]
FATAL_CLOSE_CODES = frozenset({1008, 1009})
"""Policy violation and message too big: reconnecting would only repeat them."""
_ids = itertools.count(1)


class Client:
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        retries: int = 5,
        open_timeout: float = 10.0,
        default_timeout_s: float = 60.0,
        timeout_grace_s: float = 5.0,
        on_state: Callable[[State], None] | None = None,
    ) -> None:
        """`url`: the gateway's WebSocket endpoint (ws://host:port/v1/ws). `token`: an API key or JWT, sent as
        `Authorization: Bearer <token>` in the handshake.
        `retries`: how often a refused request is sent again. `default_timeout_s`: client-side limit of a request
        that names no deadline. `on_state`: called with each connection state change (for progress displays)."""
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.retries = retries
        self.open_timeout = open_timeout
        self.default_timeout_s = default_timeout_s
        self.timeout_grace_s = timeout_grace_s
        self.on_state = on_state
        self.session: str | None = None
        """The resume token of the current session (treat it as a secret)."""
        self.last_seq = 0
        self.gateway = ""
        self.max_frame_bytes = 0
        """The largest frame the gateway takes (from its welcome; 0: not known). A larger one would close the socket
        (1009) and end every request on it, so the client refuses it before sending."""
        self.state: State = "idle"
        self.reconnects = 0
        """Successful reconnects so far."""
        self.resumed = False
        """Whether the latest reconnect resumed the session (False after a fresh start)."""
        self.retried = 0
        """Requests sent again after a retryable refusal."""
        self._ws: ClientConnection | None = None
        self._gen = 0
        self._calls: dict[str, Call] = {}
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._lost: ConnectionLost | None = None
        self._attempt = 0
        """Reconnect attempts since the connection last stayed up `backoff.stable_s`: a server that welcomes and then
        closes every time is retried with growing delays (and given up on), not every few hundred milliseconds."""
        self._background: set[asyncio.Task[Any]] = set()
        self._cancel_later: set[str] = set()
        """Requests given up on while disconnected, cancelled on the server once the session resumes."""
        self._cancels = Cancels(self._resend_cancel, self.backoff.base_s)

    # ---- connection ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> Welcome:
        """Open the socket and start (or, if `session` is set, resume) a session."""
        self._set_state("connecting")
        try:
            welcome = await self._open()
        except BaseException:
            self._set_state("idle")  # nothing is connected: requests are refused at once, and connect() may be retried
            raise
        self._set_state("open")
        self._runner = asyncio.create_task(self._run(), name="rtai-client")
        self._runner.add_done_callback(self._runner_ended)
        return welcome

    def _runner_ended(self, task: asyncio.Task[None]) -> None:
        """The reader must never die unnoticed: its callers would wait for their timeouts."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("rtai.reader_failed", exc_info=exc)
            self._lose(ConnectionLost(f"the client's reader failed: {exc!r}"))
            if self._ws is not None:  # nobody reads it any more
                self._spawn(self._ws.close())

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run `work` in the background, kept by reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Close normally (code 1000): the server cancels this session's unfinished requests."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a reader failure was reported already
                await self._runner
        self._cancels.clear()
        self._fail_all(ConnectionLost("the client was closed", 1000))
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
        self._ws = ws
        self._gen += 1
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

    async def _run(self) -> None:
        """Read frames; after an unexpected close, reconnect and resume (or fail every request in flight)."""
        loop = asyncio.get_running_loop()
        while True:
            ws = self._ws
            assert ws is not None
            opened_at = loop.time()
            try:
                async for raw in ws:
                    self._dispatch(raw)
            except ConnectionClosed:
                pass
            if self._closing:
                return
            code = ws.close_code
            log.info("rtai.disconnected code=%s reason=%s", code, ws.close_reason)
            for rid in self._cancels.clear():  # the next connection sends again what is still needed
                if rid not in self._calls:  # a live request's cancel goes out with the request (_resend_unfinished)
                    self._cancel_later.add(rid)
            if not self.reconnect or code in FATAL_CLOSE_CODES:
                self._lose(ConnectionLost(f"connection closed ({code} {ws.close_reason})", code))
                return
            if loop.time() - opened_at >= self.backoff.stable_s:
                self._attempt = 0
            if (lost := await self._reconnect(code)) is not None:
                self._lose(lost)
                return

    def _lose(self, exc: ConnectionLost) -> None:
        self._lost = exc
        self._cancels.clear()
        self._fail_all(exc)
        self._set_state("closed")

    async def _reconnect(self, code: int | None) -> ConnectionLost | None:
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
            await self._resend_unfinished(welcome.resumed)
            return None
        if refusal is None:
            return ConnectionLost(f"could not reconnect after close {code}", code)
        close_code = code if refusal.close_code is None else refusal.close_code  # a refused handshake has none
        lost = ConnectionLost(f"could not reconnect after close {code}: {refusal}", close_code, refusal.code)
        lost.__cause__ = refusal
        return lost

    async def _resend_unfinished(self, resumed: bool) -> None:
        """Send again every request without a final frame: the server answers each id once (idempotency). Requests
        given up on while disconnected are cancelled now (in a new session nothing of them is left to cancel)."""
        loop = asyncio.get_running_loop()
        cancels, self._cancel_later = self._cancel_later, set()
        for rid in cancels if resumed else ():
            await self._send_cancel(rid)
        for call in list(self._calls.values()):
            if self._calls.get(call.id) is not call:
                continue  # its caller gave up while an earlier one was sent: `_abandon` sent its cancel already
            if call.done or not call.started or call.waiting:
                continue  # a waiting request is sent again when its retry is due
            if not resumed:
                if call.next_index > 0:
                    call.fail(SessionLost(f"session lost while request {call.id!r} was streaming"))
                    continue
                if not call.trim_budget(loop.time()):  # a new session runs it afresh: only what is left of it
                    msg = "the request's deadline passed while the client reconnected"
                    call.fail(RequestError(Error(id=call.id, code="deadline_exceeded", message=msg)))
                    continue
                call.accepted = False
            await self._send_call(call)
            if call.cancel_requested:
                await self._send_cancel(call.id)

    def _dispatch(self, raw: str | bytes) -> None:
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
        if frame.id in self._cancels and self._answers_cancel(frame):
            return
        call = self._calls.get(frame.id)
        if call is None:
            return
        if isinstance(frame, Accepted):
            call.accepted = True
            call.waiting = False  # it runs: a refusal's retry is moot
        else:
            call.offer(frame)

    def _answers_cancel(self, frame: Accepted | Chunk | Result | Error) -> bool:
        """Whether `frame` answers the pending cancel of its id rather than the request itself (`Cancels`)."""
        rid = frame.id
        assert rid is not None
        if isinstance(frame, Error) and frame.seq is None and frame.code == "rate_limited":
            self._cancels.refused(frame)  # over the rate limit: the cancel is sent again, the request runs on
            return True
        if isinstance(frame, Error) and frame.seq is None and frame.code == NOT_IN_FLIGHT:
            # Nothing of the request is on the server (its final frame, if any, came before and ended it): it ends
            # as its caller asked. (Were this the infer's own refusal, the caller still asked for its end.)
            self._cancels.answered(rid)
            if (call := self._calls.get(rid)) is not None:
                call.fail(RequestError(Error(id=rid, code="cancelled", message="cancelled by the client")))
            return True
        if isinstance(frame, Result) or (isinstance(frame, Error) and not is_refusal(frame)):
            self._cancels.answered(rid)  # the request ended: its cancel has nothing left to do
        return False

    def _fail_all(self, exc: ConnectionLost) -> None:
        for call in self._calls.values():
            call.fail(exc.again())  # one instance each: re-raising a shared one grows its traceback every time

    # ---- sending ------------------------------------------------------------------------------------------------

    async def _send_raw(self, frame: dict[str, Any]) -> bool:
        ws = self._ws
        if ws is None or self.state != "open":
            return False
        try:
            await ws.send(json.dumps(frame))
        except ConnectionClosed:
            return False  # the reader reconnects and sends unfinished requests again
        return True

    async def _send_call(self, call: Call) -> None:
        if call.done or call.sent_gen == self._gen or self.state != "open":
            return
        if (too_big := self._too_big(call)) is not None:  # a gateway with a smaller limit, after a reconnect
            call.fail(too_big)
            return
        call.sent_gen = self._gen
        if not await self._send_raw(call.frame()):
            call.sent_gen = -1

    async def _send_cancel(self, rid: str) -> None:
        """Send a cancel, pending until answered (one the rate limit refuses is sent again). One that cannot be sent
        now goes out once the session resumes."""
        self._cancels.sent(rid)
        if not await self._send_raw({"type": "cancel", "id": rid}):
            self._cancels.answered(rid)
            if rid not in self._calls:  # a live request's cancel goes out with the request (_resend_unfinished)
                self._cancel_later.add(rid)

    def _resend_cancel(self, rid: str) -> None:
        self._spawn(self._send_cancel(rid))

    # ---- requests -----------------------------------------------------------------------------------------------

    def _new_call(
        self, task: str, text: str, request_id: str | None, stream: bool, deadline_ms: int | None, **opts: Any
    ) -> Call:
        if self._lost is not None:
            raise self._lost.again() from self._lost
        if self._closing:
            raise ConnectionLost("the client was closed", 1000)
        if self.state in ("idle", "connecting"):  # nothing would send it: it would wait for its whole timeout
            raise RuntimeError(
                "call `await client.connect()` (or use `async with Client(...)`) and let it succeed first"
            )
        rid = request_id or f"py-{os.getpid()}-{next(_ids)}"
        if rid in self._calls:
            raise ValueError(f"request id {rid!r} is already in use by this client")
        options: dict[str, Any] = {k: v for k, v in opts.items() if v is not None}
        if stream:
            options["stream"] = True
        if deadline_ms is not None:
            options["deadline_ms"] = deadline_ms
        call = Call(id=rid, task=task, input=text, options=options, budget_ms=deadline_ms)
        if (too_big := self._too_big(call)) is not None:
            raise too_big
        self._calls[rid] = call
        return call

    def _too_big(self, call: Call) -> RequestError | None:
        """A request the gateway would answer by closing the socket (1009), failing every request on it."""
        size = call.size()
        if 0 < self.max_frame_bytes < size:
            msg = f"the request is {size} bytes; the gateway takes frames of at most {self.max_frame_bytes}"
            return RequestError(Error(id=call.id, code="invalid_request", message=msg))
        return None

    def _timeout(self, deadline_ms: int | None, timeout_s: float | None) -> float:
        if timeout_s is not None:
            return timeout_s
        if deadline_ms is not None:
            return deadline_ms / 1000 + self.timeout_grace_s
        return self.default_timeout_s

    async def _drive(self, call: Call, limit_s: float, retries: int) -> AsyncIterator[Chunk]:
        """Send the request and yield its chunks; set `call.result`, or raise the error that ended it. Refusals are
        retried after `retry_after_ms` (`Retry`)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        retry = Retry(call, retries, self.backoff.base_s)
        call.started, call.started_at = True, loop.time()
        await self._send_call(call)
        while True:
            try:
                item = await asyncio.wait_for(call.queue.get(), max(retry.wake(end) - loop.time(), 0))
            except TimeoutError:
                if retry.at is None or loop.time() >= end:
                    raise RequestTimeout(f"no final frame for {call.id!r} within {limit_s:.1f}s") from None
                if retry.due(loop.time()):
                    await self._send_call(call)
                continue
            if isinstance(item, RtaiError):
                raise item
            if isinstance(item, Chunk):
                yield item
            elif isinstance(item, Result):
                call.result = item
                return
            else:
                attempts = retry.attempts
                if not retry.on_error(item, loop.time(), end):
                    call.done = True
                    raise RequestError(item)
                self.retried += retry.attempts - attempts

    async def infer(
        self,
        task: str,
        text: str,
        *,
        request_id: str | None = None,
        deadline_ms: int | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        **options: Any,
    ) -> Result:
        """Run one request and return its `Result` (`.output` is the task's output). Raises RequestError (with
        `.code`), RequestTimeout or ConnectionLost. Extra keyword options (e.g. `max_new_tokens`) go to the task."""
        call = self._new_call(task, text, request_id, False, deadline_ms, **options)
        try:
            async for _ in self._drive(call, self._timeout(deadline_ms, timeout_s), self._retries(retries)):
                pass
            assert call.result is not None
            return call.result
        finally:
            self._abandon(call)

    def stream(
        self,
        task: str,
        text: str,
        *,
        request_id: str | None = None,
        deadline_ms: int | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        **options: Any,
    ) -> Stream:
        """A streaming request: `async for chunk in client.stream(...)`; then `.result` holds the final Result."""
        call = self._new_call(task, text, request_id, True, deadline_ms, **options)
        return Stream(self, call, self._timeout(deadline_ms, timeout_s), self._retries(retries))

    def _retries(self, retries: int | None) -> int:
        return self.retries if retries is None else retries

    async def cancel(self, request_id: str) -> None:
        """Ask the server to stop a request; its caller then gets RequestError with code `cancelled`."""
        call = self._calls.get(request_id)
        if call is not None:
            call.cancel_requested = True
            if call.waiting or not call.started:  # nothing of it is on the server: end it here
                call.fail(RequestError(Error(id=call.id, code="cancelled", message="cancelled by the client")))
                return
        await self._send_cancel(request_id)

    def _forget_unstarted(self, call: Call) -> None:
        """Free the id of a request its caller dropped before starting it (a Stream never iterated)."""
        if not call.started and self._calls.get(call.id) is call:
            del self._calls[call.id]

    def _abandon(self, call: Call) -> None:
        """Forget a request whose caller stopped waiting (a timeout, a cancelled task, a stream left early). One that
        may still run on the server is cancelled there, so it does not hold a worker for nothing."""
        self._calls.pop(call.id, None)
        if call.done or call.waiting or call.sent_gen < 0 or call.id in self._cancels:
            return  # (a cancel pending already is sent again if refused)
        if self.state != "open":
            self._cancel_later.add(call.id)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a stream left un-finished and collected outside any loop: nothing to send it with
        self._spawn(self._send_cancel(call.id))

    async def tasks(self) -> list[TaskInfo]:
        """The tasks live workers serve now (`GET /v1/tasks` on the same host)."""
        url = http_url(self.url, "/v1/tasks")
        body = await asyncio.to_thread(get_json, url, self.token, self.open_timeout)
        return parse_tasks(body)
