"""The SDK against a scripted gateway (scripted_gateway.py): cancels the rate limit refuses, requests given up on or out
of budget while the client reconnects, why a reconnect was refused, a session the server ends as idle, and a client
whose connect failed or whose connection is gone for good."""

from __future__ import annotations

import asyncio
import time
import traceback
from http import HTTPStatus
from typing import Any

import pytest
from scripted_gateway import Peer, Scripted, refusal
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from rtai_client import Backoff, Client, RequestError, RequestTimeout
from rtai_client.errors import ConnectionLost


async def _until(check: Any, what: str, timeout: float = 5) -> None:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, what
        await asyncio.sleep(0.005)


async def _sent_then_cancelled(c: Client, rid: str) -> asyncio.Task[Any]:
    """Start a request, wait until it left, cancel it; the request's task (its outcome) is returned."""
    task = asyncio.create_task(c.infer("t", "x", request_id=rid))
    calls = c._requests.calls
    await _until(lambda: rid in calls and calls[rid].sent_gen > 0, "the request was not sent")
    await c.cancel(rid)
    return task


# ---- cancels refused by the rate limit ---------------------------------------------------------------------------


async def test_a_cancel_refused_by_the_rate_limit_is_sent_again(scripted: Any) -> None:
    """The gateway refuses a frame over its rate limit with `rate_limited` and the frame's id, a cancel's included.
    That is no refusal of the request (it runs): the cancel is sent again after `retry_after_ms`, and the stream ends
    `cancelled`, not with the whole output."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        infer = await peer.recv()
        await peer.accept(infer)
        await peer.send({"type": "chunk", "id": infer["id"], "seq": 2, "index": 0, "data": "a"})
        first = await peer.recv()
        assert first["type"] == "cancel"
        await peer.send(refusal(first["id"], "rate_limited", 50))
        again = await asyncio.wait_for(peer.recv(), 2)  # before the fix: never sent, the job ran to its end
        assert again == first
        await peer.send({"type": "error", "id": infer["id"], "seq": 3, "code": "cancelled", "message": ""})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        s = c.stream("t", "x", request_id="g1")

        async def cancel_at_the_first_chunk() -> None:
            async for _ in s:
                await s.cancel()

        with pytest.raises(RequestError) as e:
            await cancel_at_the_first_chunk()
        assert e.value.code == "cancelled"
    assert server.sent("cancel") == [{"type": "cancel", "id": "g1"}] * 2


async def test_a_cancel_refused_before_the_request_was_accepted_does_not_end_it_at_once(scripted: Any) -> None:
    """The cancel's refusal can come before the infer's `accepted` (admission takes a Redis round trip): the request
    may be admitted, so the client must not end it locally and forget it; it sends the cancel again and waits for the
    server's answer."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        infer = await peer.recv()
        cancel = await peer.recv()
        await peer.send(refusal(cancel["id"], "rate_limited", 50))
        await asyncio.sleep(0.1)
        await peer.accept(infer)  # the infer itself was admitted
        assert (await asyncio.wait_for(peer.recv(), 2))["type"] == "cancel"
        await peer.send({"type": "error", "id": infer["id"], "seq": 2, "code": "cancelled", "message": ""})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        task = await _sent_then_cancelled(c, "r1")
        await asyncio.sleep(0.03)
        assert not task.done(), "ended on the client while it may run on the server"
        with pytest.raises(RequestError) as e:
            await asyncio.wait_for(task, 2)
        assert e.value.code == "cancelled"
    assert len(server.sent("cancel")) == 2


async def test_the_cancel_of_a_request_given_up_on_is_sent_again_when_refused(scripted: Any) -> None:
    """A timeout's cancel (`_abandon`) refused by the rate limit is sent again too: the job would hold a worker for
    nothing."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        await peer.accept(await peer.recv())
        cancel = await peer.recv()
        await peer.send(refusal(cancel["id"], "rate_limited", 50))
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        with pytest.raises(RequestTimeout):
            await c.infer("t", "x", request_id="slow", timeout_s=0.3)
        await _until(lambda: len(server.sent("cancel")) == 2, "the refused cancel was not sent again", 2)
    assert server.sent("cancel") == [{"type": "cancel", "id": "slow"}] * 2


async def test_a_cancel_sent_again_and_answered_not_in_flight_ends_the_request_cancelled(scripted: Any) -> None:
    """Both the infer and its cancel were over the limit: the client takes the first `rate_limited` for the cancel's
    and sends it again; the answer `invalid_request` (nothing in flight) says nothing of the request is on the server:
    it ends `cancelled`, and the infer is not sent again."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        infer = await peer.recv()
        await peer.recv()  # its cancel
        await peer.send(refusal(infer["id"], "rate_limited", 50))
        await peer.send(refusal(infer["id"], "rate_limited", 50))
        await asyncio.wait_for(peer.recv(), 2)  # the cancel, again
        not_in_flight = refusal(infer["id"], "invalid_request", None)
        await peer.send(not_in_flight | {"message": "no request with that id is in flight"})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        task = await _sent_then_cancelled(c, "r1")
        with pytest.raises(RequestError) as e:
            await asyncio.wait_for(task, 2)
        assert e.value.code == "cancelled"
        await asyncio.sleep(0.2)
    assert len(server.sent("infer")) == 1


# ---- reconnects --------------------------------------------------------------------------------------------------


async def test_a_request_given_up_on_while_others_are_sent_again_is_not_sent_after_its_cancel(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reconnect each unfinished request is sent again, one send at a time. A caller that gives up meanwhile
    gets its cancel sent at once; its infer must not follow it (a job nobody waits for, and nobody cancels).

    The order is forced, not timed: the first infer sent again (b1's) is held until A has been cancelled and the
    server has its cancel; then the sending goes on (b2, then A's turn). A request sent once that is over reaches the
    server after anything it sent for A."""
    from rtai_client._connection import Connection
    from rtai_client._requests import Requests

    send_raw = Connection.send
    held: list[str] = []
    holding, released = asyncio.Event(), asyncio.Event()

    async def congested(self: Connection, frame: dict[str, Any]) -> bool:  # infers on the 2nd socket wait their turn
        if frame["type"] == "infer" and self.gen == 2 and not released.is_set():
            held.append(frame["id"])
            holding.set()
            await released.wait()
        return await send_raw(self, frame)

    monkeypatch.setattr(Connection, "send", congested)
    resend = Requests.on_reconnect
    resent = asyncio.Event()

    async def resend_then_say_so(self: Requests, resumed: bool) -> None:
        await resend(self, resumed)
        resent.set()

    monkeypatch.setattr(Requests, "on_reconnect", resend_then_say_so)

    async def script(peer: Peer) -> None:
        await peer.welcome(resumed=peer.n > 0)
        if peer.n == 0:
            for seq in (1, 2, 3):
                await peer.accept(await peer.recv(), seq=seq)
            await asyncio.sleep(0.1)
            await peer.ws.close(1012, "restart")
            return
        await peer.drain()

    def got(rid: str, kind: str) -> bool:
        return any(n == 1 and f["type"] == kind and f.get("id") == rid for n, f in server.received)

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.05)) as c:
        others = [asyncio.create_task(c.infer("t", "b", request_id=f"b{i}", timeout_s=10)) for i in (1, 2)]
        a = asyncio.create_task(c.infer("t", "a", request_id="A", timeout_s=10))
        await _until(lambda: all(rid in c._requests.calls for rid in ("b1", "b2", "A")), "not all sent")
        await asyncio.wait_for(holding.wait(), 5)  # reconnected, and sending the unfinished requests again
        assert held == ["b1"], "A comes after b1 and b2"
        a.cancel()  # while b1, b2 are sent again
        with pytest.raises(asyncio.CancelledError):
            await a
        await _until(lambda: got("A", "cancel"), "A's cancel was not sent")
        released.set()
        await asyncio.wait_for(resent.wait(), 5)  # A's turn came and went (an infer of A would be written by now)
        last = asyncio.create_task(c.infer("t", "z", request_id="z", timeout_s=10))
        await _until(lambda: got("z", "infer"), "z was not sent")  # on the same socket: what came before is in
        assert got("b2", "infer")
        for t in [*others, last]:
            t.cancel()
    about_a = [f["type"] for n, f in server.received if n == 1 and f.get("id") == "A"]
    assert about_a == ["cancel"]


async def test_a_refused_reconnect_reports_its_own_reason(scripted: Any) -> None:
    """The token expired while the gateway restarted: the reconnect is refused `unauthenticated`, then 1008. The
    requests in flight say so (close code 1008, code `unauthenticated`), not merely that the old socket closed."""

    async def script(peer: Peer) -> None:
        if peer.n == 0:
            await peer.accept_then_restart()
            return
        await peer.recv()  # hello
        await peer.send(refusal(None, "unauthenticated", None) | {"message": "token expired"})
        await peer.ws.close(1008, "unauthenticated")

    server = await scripted(script)
    async with Client(server.url, token="expired", backoff=Backoff(base_s=0.05)) as c:
        with pytest.raises(ConnectionLost) as e:
            await asyncio.wait_for(c.infer("t", "x"), 5)
        assert c.state == "closed"
        assert server.connections == 2, "a 1008 refusal is not retried"
    assert (e.value.close_code, e.value.code) == (1008, "unauthenticated")
    assert "token expired" in str(e.value)


async def _restart_then_new_session(peer: Peer) -> None:
    """Accept the request and restart; the reconnect gets a new session (the old one was lost), which never answers."""
    await peer.welcome(resumed=False)
    if peer.n == 0:
        await peer.accept(await peer.recv())
        await peer.ws.close(1012, "restart")
        return
    await peer.drain()


async def test_a_request_sent_again_on_a_new_session_asks_for_what_is_left_of_its_budget(scripted: Any) -> None:
    server = await scripted(_restart_then_new_session)
    async with Client(server.url, backoff=Backoff(base_s=0.4, max_s=0.4), timeout_grace_s=0.2) as c:
        with pytest.raises(RequestTimeout):  # the scripted gateway never answers
            await c.infer("t", "x", deadline_ms=1000)
    first, again = server.sent("infer")
    assert first["options"]["deadline_ms"] == 1000
    assert 0 < again["options"]["deadline_ms"] <= 1000 - 200  # the reconnect took 200-400 ms


async def test_a_request_out_of_budget_when_a_new_session_starts_ends_deadline_exceeded(scripted: Any) -> None:
    server = await scripted(_restart_then_new_session)
    async with Client(server.url, backoff=Backoff(base_s=0.4, max_s=0.4), timeout_grace_s=2) as c:
        t0 = time.monotonic()
        with pytest.raises(RequestError) as e:
            await c.infer("t", "x", deadline_ms=100)  # the reconnect takes 200-400 ms
        assert time.monotonic() - t0 < 1.5, "it waited for its client-side timeout"
    assert e.value.code == "deadline_exceeded"
    assert len(server.sent("infer")) == 1, "sent again with nothing left of its budget"


# ---- a session the server ends because it is idle ----------------------------------------------------------------


async def _answer(peer: Peer, seq: int) -> None:
    infer = await peer.recv()
    assert infer["type"] == "infer", infer
    await peer.accept(infer, seq)
    await peer.send({"type": "result", "id": infer["id"], "seq": seq + 1, "output": {"n": peer.n}})


async def test_an_idle_session_the_server_ends_is_opened_again_by_the_next_request_not_at_once(scripted: Any) -> None:
    """The gateway closes a socket with nothing in flight after `idle_timeout_s` (1000). Reconnecting at once, an idle
    client held a socket and started a new session every idle timeout for as long as it lived."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        await _answer(peer, 1)
        if peer.n == 0:
            await peer.ws.close(1000, "idle timeout")
            return
        await _answer(peer, 3)  # two requests at once, on one new socket
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.01, max_s=0.02)) as c:
        assert (await c.infer("t", "x")).output == {"n": 0}
        await _until(lambda: c.state == "idle", "the server's idle close left the client " + c.state)
        await asyncio.sleep(0.3)  # several backoff delays
        assert server.connections == 1, "reconnected with nothing to send"
        both = await asyncio.wait_for(asyncio.gather(c.infer("t", "y"), c.infer("t", "z")), 5)
        assert [r.output for r in both] == [{"n": 1}, {"n": 1}]
        assert server.connections == 2 and c.state == "open"


async def test_a_reopen_every_caller_gave_up_on_does_not_leave_the_next_request_unsent(scripted: Any) -> None:
    """The reopen runs on though its only caller stopped waiting; once it is over, the next idle close's reopen is a new
    one (a finished reopen left in place made the next request find the connection idle and never send it)."""

    async def script(peer: Peer) -> None:
        if peer.n == 1:
            await asyncio.sleep(0.5)  # a slow welcome: the caller gives up meanwhile
        await peer.welcome()
        if peer.n == 0:
            await _answer(peer, 1)
        elif peer.n == 2:
            await _answer(peer, 1)
            await peer.drain()
            return
        await asyncio.sleep(0.1)
        await peer.ws.close(1000, "idle timeout")

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.01, max_s=0.02)) as c:
        await c.infer("t", "x")
        await _until(lambda: c.state == "idle", "not idle after the first idle close")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.infer("t", "y"), 0.2)
        await _until(lambda: server.connections == 2 and c.state == "idle", "not idle after the second idle close")
        assert (await asyncio.wait_for(c.infer("t", "z"), 5)).output == {"n": 2}


async def test_a_stream_not_iterated_yet_does_not_keep_an_idle_client_connected(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        await asyncio.sleep(0.1)
        await peer.ws.close(1000, "idle timeout")

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.01, max_s=0.02)) as c:
        unstarted = c.stream("t", "x")  # nothing of it sent: the gateway saw nothing in flight
        await _until(lambda: c.state == "idle", "reconnected for a request never sent: " + c.state)
        await asyncio.sleep(0.2)
        assert server.connections == 1
        del unstarted


async def test_close_during_a_reopen_leaves_no_socket_behind(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        if peer.n == 1:
            await asyncio.sleep(0.5)
        await peer.welcome()
        if peer.n == 0:
            await _answer(peer, 1)
            await peer.ws.close(1000, "idle timeout")
            return
        await peer.drain()

    server = await scripted(script)
    states: list[str] = []
    c = Client(server.url, backoff=Backoff(base_s=0.01, max_s=0.02), on_state=states.append)
    await c.connect()
    await c.infer("t", "x")
    await _until(lambda: c.state == "idle", "not idle after the idle close")
    request = asyncio.create_task(c.infer("t", "y", timeout_s=3))
    await _until(lambda: server.connections == 2, "no reopen")
    await c.close()
    with pytest.raises(ConnectionLost, match="closed"):
        await request
    await asyncio.sleep(0.6)  # past the slow welcome: before the fix the reopen finished, and the client was open
    assert c.state == "closed" and c._conn._ws is None, states
    assert states[-1] == "closed", states


async def test_a_normal_close_with_a_request_in_flight_is_reconnected_at_once(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome(resumed=peer.n > 0)
        if peer.n == 0:
            await peer.accept(await peer.recv())
            await peer.ws.close(1000, "bye")
            return
        await _answer(peer, 2)  # sent again on the new socket
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.01, max_s=0.02)) as c:
        assert (await asyncio.wait_for(c.infer("t", "x"), 5)).output == {"n": 1}
        assert server.connections == 2


async def test_connect_on_a_connected_client_is_refused_not_a_second_socket(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        with pytest.raises(RuntimeError, match="one socket at a time"):
            await c.connect()
        assert server.connections == 1


# ---- a client that is not connected ------------------------------------------------------------------------------


async def test_a_request_after_a_failed_connect_is_refused_at_once() -> None:
    c = Client("ws://127.0.0.1:9/v1/ws", open_timeout=1)
    with pytest.raises(ConnectionRefusedError):  # nothing listens on port 9
        await c.connect()
    assert c.state == "idle"
    with pytest.raises(RuntimeError, match="connect"):
        await asyncio.wait_for(c.infer("t", "x"), 2)  # before the fix: a wait of default_timeout_s (60 s)


async def test_a_refused_websocket_handshake_is_a_connection_lost() -> None:
    def forbid(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")

    async def never(ws: ServerConnection) -> None:
        raise AssertionError("the handshake was refused")

    async with serve(never, "127.0.0.1", 0, process_request=forbid) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        c = Client(f"ws://127.0.0.1:{port}/v1/ws")
        with pytest.raises(ConnectionLost, match="HTTP 403"):
            await c.connect()
    assert c.state == "idle"
    with pytest.raises(ConnectionLost, match="not a gateway URL"):
        await Client("http://127.0.0.1:9/v1/ws").connect()


async def test_each_caller_gets_its_own_connection_lost(scripted: Any) -> None:
    """One instance raised again and again grew its traceback by every raise (and kept every caller's frames)."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        await peer.ws.close(1008, "policy")

    server = await scripted(script)
    c = Client(server.url)
    await c.connect()
    await _until(lambda: c.state == "closed", "not closed")
    raised: list[ConnectionLost] = []
    for _ in range(50):
        with pytest.raises(ConnectionLost) as e:
            await c.infer("t", "x")
        raised.append(e.value)
    await c.close()
    depths = {len(traceback.extract_tb(e.__traceback__)) for e in raised}
    assert len(depths) == 1, depths
    assert len({id(e) for e in raised}) == len(raised)
    assert all(e.close_code == 1008 for e in raised)


# ---- the scripted gateway itself ---------------------------------------------------------------------------------


async def test_a_failing_script_fails_its_test() -> None:
    """An assert in a script runs in the server's connection handler, where websockets only logs what it raises: the
    `scripted` fixture raises it at teardown (`Scripted.check`)."""

    async def script(peer: Peer) -> None:
        hello = await peer.recv()
        assert hello["type"] == "not what the client sends"

    s = Scripted(script)
    async with serve(s._handle, "127.0.0.1", 0) as s.server:
        with pytest.raises(ConnectionLost):
            await Client(s.url, open_timeout=2).connect()
    with pytest.raises(AssertionError, match="not what the client sends"):
        s.check()


async def test_a_resume_given_up_on_before_its_welcome_does_not_end_the_session() -> None:
    """A welcome later than open_timeout: the client gives the socket up, but not with 1000, which the gateway takes
    as a normal close that cancels every unfinished request of the session the client was resuming."""
    codes: list[int | None] = []

    async def script(peer: Peer) -> None:
        await peer.recv()  # the hello; no welcome
        try:
            await peer.ws.wait_closed()
        finally:
            rcvd = peer.ws.protocol.close_rcvd
            codes.append(rcvd.code if rcvd else None)

    s = Scripted(script)
    async with serve(s._handle, "127.0.0.1", 0) as s.server:
        client = Client(s.url, open_timeout=0.5)
        client.session, client.last_seq = "s1", 4  # resuming
        with pytest.raises((TimeoutError, ConnectionLost)):
            await client.connect()
        deadline = time.monotonic() + 5
        while not codes and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    assert codes and codes[0] not in (1000, 1001), codes
    s.check()
