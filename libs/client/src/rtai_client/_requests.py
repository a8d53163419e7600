"""The requests in flight on a client: which are live, what the frames read mean to them, their sending (and sending
again after a reconnect: the server answers each id once) and their cancels."""

from __future__ import annotations

import asyncio

from rtai_client._calls import Call, is_refusal
from rtai_client._cancels import NOT_IN_FLIGHT, Cancels
from rtai_client._connection import Connection
from rtai_client.errors import ConnectionLost, RequestError, SessionLost
from rtai_protocol import Accepted, Chunk, Error, Result


class Requests:
    """The requests of one client, by id; the `Handler` of its connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.calls: dict[str, Call] = {}
        self._cancels = Cancels(self._resend_cancel, conn.backoff.base_s)
        self._cancel_later: set[str] = set()
        """Requests given up on while disconnected, cancelled on the server once the session resumes."""

    def add(self, call: Call) -> None:
        """Take a new request (not sent yet)."""
        if call.id in self.calls:
            raise ValueError(f"request id {call.id!r} is already in use by this client")
        if (too_big := self._too_big(call)) is not None:
            raise too_big
        self.calls[call.id] = call

    def _too_big(self, call: Call) -> RequestError | None:
        """A request the gateway would answer by closing the socket (1009), failing every request on it."""
        size = call.size()
        max_frame_bytes = self._conn.max_frame_bytes
        if 0 < max_frame_bytes < size:
            msg = f"the request is {size} bytes; the gateway takes frames of at most {max_frame_bytes}"
            return RequestError(Error(id=call.id, code="invalid_request", message=msg))
        return None

    # ---- the connection's news (`Handler`) ----------------------------------------------------------------------

    def on_frame(self, frame: Accepted | Chunk | Result | Error) -> None:
        assert frame.id is not None
        if frame.id in self._cancels and self._answers_cancel(frame):
            return
        call = self.calls.get(frame.id)
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
            if (call := self.calls.get(rid)) is not None:
                call.fail(RequestError(Error(id=rid, code="cancelled", message="cancelled by the client")))
            return True
        if isinstance(frame, Result) or (isinstance(frame, Error) and not is_refusal(frame)):
            self._cancels.answered(rid)  # the request ended: its cancel has nothing left to do
        return False

    def on_drop(self) -> None:
        for rid in self._cancels.clear():  # the next connection sends again what is still needed
            if rid not in self.calls:  # a live request's cancel goes out with the request (on_reconnect)
                self._cancel_later.add(rid)

    async def on_reconnect(self, resumed: bool) -> None:
        """Send again every request without a final frame: the server answers each id once (idempotency). Requests
        given up on while disconnected are cancelled now (in a new session nothing of them is left to cancel)."""
        loop = asyncio.get_running_loop()
        cancels, self._cancel_later = self._cancel_later, set()
        for rid in cancels if resumed else ():
            await self.send_cancel(rid)
        for call in list(self.calls.values()):
            if self.calls.get(call.id) is not call:
                continue  # its caller gave up while an earlier one was sent: `abandon` sent its cancel already
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
            await self.send(call)
            if call.cancel_requested:
                await self.send_cancel(call.id)

    def quiet(self) -> bool:
        # A request not started yet (a stream never iterated) or already answered waits for nothing: the next one
        # to start connects again.
        return not self._cancel_later and not any(c.started and not c.done for c in self.calls.values())

    def on_lost(self, exc: ConnectionLost) -> None:
        self._cancels.clear()
        for call in self.calls.values():
            call.fail(exc.again())  # one instance each: re-raising a shared one grows its traceback every time

    # ---- sending ------------------------------------------------------------------------------------------------

    async def send(self, call: Call) -> None:
        """Send the request, once per connection."""
        conn = self._conn
        if call.done or call.sent_gen == conn.gen or conn.state != "open":
            return
        if (too_big := self._too_big(call)) is not None:  # a gateway with a smaller limit, after a reconnect
            call.fail(too_big)
            return
        call.sent_gen = conn.gen
        if not await conn.send(call.frame()):
            call.sent_gen = -1

    async def send_cancel(self, rid: str) -> None:
        """Send a cancel, pending until answered (one the rate limit refuses is sent again). One that cannot be sent
        now goes out once the session resumes."""
        self._cancels.sent(rid)
        if not await self._conn.send({"type": "cancel", "id": rid}):
            self._cancels.answered(rid)
            if rid not in self.calls:  # a live request's cancel goes out with the request (on_reconnect)
                self._cancel_later.add(rid)

    def _resend_cancel(self, rid: str) -> None:
        self._conn.spawn(self.send_cancel(rid))

    # ---- callers giving up --------------------------------------------------------------------------------------

    async def cancel(self, rid: str) -> None:
        """Ask the server to stop a request; its caller then gets RequestError with code `cancelled`."""
        call = self.calls.get(rid)
        if call is not None:
            call.cancel_requested = True
            if call.waiting or not call.started:  # nothing of it is on the server: end it here
                call.fail(RequestError(Error(id=call.id, code="cancelled", message="cancelled by the client")))
                return
        await self.send_cancel(rid)

    def forget_unstarted(self, call: Call) -> None:
        """Free the id of a request its caller dropped before starting it (a Stream never iterated)."""
        if not call.started and self.calls.get(call.id) is call:
            del self.calls[call.id]

    def abandon(self, call: Call) -> None:
        """Forget a request whose caller stopped waiting (a timeout, a cancelled task, a stream left early). One that
        may still run on the server is cancelled there, so it does not hold a worker for nothing."""
        self.calls.pop(call.id, None)
        if call.done or call.waiting or call.sent_gen < 0 or call.id in self._cancels:
            return  # (a cancel pending already is sent again if refused)
        if self._conn.state != "open":
            self._cancel_later.add(call.id)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # a stream left un-finished and collected outside any loop: nothing to send it with
        self._conn.spawn(self.send_cancel(call.id))
