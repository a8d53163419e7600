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

The socket and the session live in `_connection.Connection`, the requests in flight in `_requests.Requests`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from rtai_client._calls import Call, Retry
from rtai_client._connection import Connection, State
from rtai_client._http import TaskInfo, get_json, http_url, parse_tasks
from rtai_client._requests import Requests
from rtai_client.backoff import Backoff
from rtai_client.errors import ConnectionLost, RequestError, RequestTimeout, RtaiError
from rtai_client.stream import Stream
from rtai_protocol import Chunk, Result, Welcome

_ids = itertools.count(1)
T = TypeVar("T")


class _OnConnection(Generic[T]):
    """An attribute of the Client that its connection keeps: read and written through (`client.session = ...` before
    `connect()` resumes that session)."""

    def __set_name__(self, owner: type[Client], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, client: None, owner: type[Client]) -> _OnConnection[T]: ...
    @overload
    def __get__(self, client: Client, owner: type[Client]) -> T: ...
    def __get__(self, client: Client | None, owner: type[Client]) -> T | _OnConnection[T]:
        if client is None:
            return self
        value: T = getattr(client._conn, self._name)
        return value

    def __set__(self, client: Client, value: T) -> None:
        setattr(client._conn, self._name, value)


class Client:
    url = _OnConnection[str]()
    token = _OnConnection[str | None]()
    reconnect = _OnConnection[bool]()
    backoff = _OnConnection[Backoff]()
    open_timeout = _OnConnection[float]()
    on_state = _OnConnection[Callable[[State], None] | None]()
    session = _OnConnection[str | None]()
    """The resume token of the current session (treat it as a secret)."""
    last_seq = _OnConnection[int]()
    gateway = _OnConnection[str]()
    max_frame_bytes = _OnConnection[int]()
    """The largest frame the gateway takes (from its welcome; 0: not known). A larger one would close the socket
    (1009) and end every request on it, so the client refuses it before sending."""
    state = _OnConnection[State]()
    reconnects = _OnConnection[int]()
    """Successful reconnects so far."""
    resumed = _OnConnection[bool]()
    """Whether the latest reconnect resumed the session (False after a fresh start)."""

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
        self._conn = Connection(
            url,
            token=token,
            reconnect=reconnect,
            backoff=backoff or Backoff(),
            open_timeout=open_timeout,
            on_state=on_state,
        )
        self._requests = Requests(self._conn)
        self.retries = retries
        self.default_timeout_s = default_timeout_s
        self.timeout_grace_s = timeout_grace_s
        self.retried = 0
        """Requests sent again after a retryable refusal."""

    # ---- connection ---------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> Welcome:
        """Open the socket and start (or, if `session` is set, resume) a session. Not needed again after the server
        ends an idle session: the next request connects again."""
        conn = self._conn
        if conn.state != "idle" or conn.closing:
            raise RuntimeError(f"connect() on a client that is {conn.state}: one socket at a time")
        if not conn.wanted:
            return await conn.connect(self._requests)
        await conn.ensure_open()  # the server ended the idle session: as a request would, and with one
        assert conn.welcome is not None
        return conn.welcome

    async def close(self) -> None:
        """Close normally (code 1000): the server cancels this session's unfinished requests."""
        await self._conn.close()

    # ---- requests -----------------------------------------------------------------------------------------------

    def _new_call(
        self, task: str, text: str, request_id: str | None, stream: bool, deadline_ms: int | None, **opts: Any
    ) -> Call:
        conn = self._conn
        if conn.lost is not None:
            raise conn.lost.again() from conn.lost
        if conn.closing:
            raise ConnectionLost("the client was closed", 1000)
        if self.state in ("idle", "connecting") and not conn.wanted:  # nothing would send it: it would time out
            raise RuntimeError(
                "call `await client.connect()` (or use `async with Client(...)`) and let it succeed first"
            )
        rid = request_id or f"py-{os.getpid()}-{next(_ids)}"
        options: dict[str, Any] = {k: v for k, v in opts.items() if v is not None}
        if stream:
            options["stream"] = True
        if deadline_ms is not None:
            options["deadline_ms"] = deadline_ms
        call = Call(id=rid, task=task, input=text, options=options, budget_ms=deadline_ms)
        self._requests.add(call)  # (refused if its id is in use, or it is too big for the gateway)
        return call

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
        await self._conn.ensure_open()  # the server ended an idle session: a new one for this request
        await self._requests.send(call)
        while True:
            try:
                item = await asyncio.wait_for(call.queue.get(), max(retry.wake(end) - loop.time(), 0))
            except TimeoutError:
                if retry.at is None or loop.time() >= end:
                    raise RequestTimeout(f"no final frame for {call.id!r} within {limit_s:.1f}s") from None
                if retry.due(loop.time()):
                    await self._conn.ensure_open()
                    await self._requests.send(call)
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
        await self._requests.cancel(request_id)

    def _forget_unstarted(self, call: Call) -> None:
        """Free the id of a request its caller dropped before starting it (a Stream never iterated)."""
        self._requests.forget_unstarted(call)

    def _abandon(self, call: Call) -> None:
        """Forget a request whose caller stopped waiting; one that may still run on the server is cancelled there."""
        self._requests.abandon(call)

    async def tasks(self) -> list[TaskInfo]:
        """The tasks live workers serve now (`GET /v1/tasks` on the same host)."""
        url = http_url(self.url, "/v1/tasks")
        body = await asyncio.to_thread(get_json, url, self.token, self.open_timeout)
        return parse_tasks(body)
