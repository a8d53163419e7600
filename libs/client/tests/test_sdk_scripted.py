"""The SDK against a scripted server: interleavings a real gateway produces only under faults (a refused copy of a
request in flight, frames arriving while a refusal waits to be retried, a server that closes after every welcome),
played exactly. The server is a real WebSocket server on loopback speaking the protocol's frames; the tests against
a real gateway are in test_sdk_live.py, the server in scripted_gateway.py."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from scripted_gateway import Peer, refusal, welcome_then_listen

from rtai_client import Backoff, Client, RequestError, RequestTimeout
from rtai_client.errors import ConnectionLost


async def test_a_refused_copy_of_an_accepted_request_does_not_end_it(scripted: Any) -> None:
    """After a reconnect the client sends its unfinished request again; the server refuses the copy (its task had no
    live worker for a moment) while the request itself still runs. Its result must still reach the caller."""

    async def script(peer: Peer) -> None:
        if peer.n == 0:
            await peer.accept_then_restart()
            return
        await peer.welcome(resumed=True)
        copy = await peer.recv()
        await peer.send(refusal(copy["id"], "unavailable", 50))
        await peer.send({"type": "result", "id": copy["id"], "seq": 2, "output": {"ok": True}})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.05)) as c:
        result = await asyncio.wait_for(c.infer("t", "x"), 5)
    assert result.output == {"ok": True}


async def test_frames_that_arrive_while_a_refusal_waits_to_be_retried_are_kept(scripted: Any) -> None:
    """An `unavailable` whose admission's answer was lost may be followed by the request's own frames: the request ran.
    The client takes them instead of dropping them and sending it again."""

    async def script(peer: Peer) -> None:
        await peer.welcome()
        infer = await peer.recv()
        await peer.send(refusal(infer["id"], "unavailable", 500))
        await peer.send({"type": "result", "id": infer["id"], "seq": 1, "output": {"ran": True}})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        result = await asyncio.wait_for(c.infer("t", "x"), 5)
        await asyncio.sleep(0.7)  # past the retry that was scheduled: it must not be sent
    assert result.output == {"ran": True}
    assert len(server.sent("infer")) == 1


async def test_a_refused_request_is_sent_again_after_retry_after(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        first = await peer.recv()
        await peer.send(refusal(first["id"], "overloaded", 100))
        again = await peer.recv()
        await peer.send({"type": "accepted", "id": again["id"], "seq": 1, "task": "t", "deadline_ms": 0})
        await peer.send({"type": "result", "id": again["id"], "seq": 2, "output": 1})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        t0 = time.monotonic()
        result = await asyncio.wait_for(c.infer("t", "x", deadline_ms=10_000), 5)
        assert time.monotonic() - t0 >= 0.1
        assert c.retried == 1
    assert result.output == 1
    first, again = server.sent("infer")
    assert first["id"] == again["id"]
    assert again["options"]["deadline_ms"] < 10_000, "a request sent again asks for what is left of its budget"


async def test_a_cancel_while_a_refused_request_waits_ends_it_at_once_without_sending_it(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        infer = await peer.recv()
        await peer.send(refusal(infer["id"], "overloaded", 3000))
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        call = asyncio.create_task(c.infer("t", "x", request_id="r1"))
        while not ("r1" in c._requests.calls and c._requests.calls["r1"].waiting):  # refused: it waits to be sent again
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await c.cancel("r1")
        with pytest.raises(RequestError) as e:
            await asyncio.wait_for(call, 2)
        assert e.value.code == "cancelled"
        assert time.monotonic() - t0 < 1
        await asyncio.sleep(0.2)
    assert len(server.sent("infer")) == 1, "a cancelled request was sent again"
    assert server.sent("cancel") == [], "nothing of it was on the server to cancel"


async def test_a_server_that_closes_after_every_welcome_gets_growing_delays_then_is_given_up(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome(resumed=peer.n > 0)
        await peer.ws.close(1011, "replay failed")

    server = await scripted(script)
    c = Client(server.url, backoff=Backoff(base_s=0.05, max_s=0.4, max_attempts=4))
    await c.connect()
    t0 = time.monotonic()
    while c.state != "closed" and time.monotonic() - t0 < 10:
        await asyncio.sleep(0.05)
    assert c.state == "closed", "a server that drops every connection was retried forever"
    # The first connection and 4 attempts: without the count kept across welcomes, ~40 connections in that time.
    assert server.connections == 5
    with pytest.raises(ConnectionLost):
        await c.infer("t", "x")
    await c.close()


async def test_a_frame_type_the_client_does_not_know_before_the_welcome_is_ignored(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()
        await peer.send({"type": "notice", "text": "a frame type from a newer server"})
        await peer.send({"type": "welcome", "session": "s1", "resumed": False, "gateway": "g1", "protocol": "1"})
        infer = await peer.recv()
        await peer.send({"type": "result", "id": infer["id"], "seq": 1, "output": 1})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        assert (await asyncio.wait_for(c.infer("t", "x"), 5)).output == 1


async def test_a_request_its_caller_gave_up_on_is_cancelled_on_the_server(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome()
        infer = await peer.recv()
        await peer.accept(infer)
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url) as c:
        with pytest.raises(RequestTimeout):
            await c.infer("t", "x", request_id="slow", timeout_s=0.3)
        t0 = time.monotonic()
        while not server.sent("cancel") and time.monotonic() - t0 < 2:
            await asyncio.sleep(0.02)
    assert server.sent("cancel") == [{"type": "cancel", "id": "slow"}]


async def test_a_stream_never_iterated_is_not_sent_after_a_reconnect(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome(resumed=peer.n > 0)
        if peer.n == 0:
            await asyncio.sleep(0.2)
            await peer.ws.close(1012, "restart")
            return
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.05)) as c:
        c.stream("t", "never iterated")
        t0 = time.monotonic()
        while c.reconnects == 0 and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.02)
        assert c.reconnects == 1
        await asyncio.sleep(0.2)
    assert server.sent("infer") == []


async def test_an_on_state_callback_that_raises_does_not_stop_the_client(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        if peer.n == 0:
            await peer.accept_then_restart()
            return
        await peer.welcome(resumed=True)
        copy = await peer.recv()
        await peer.send({"type": "result", "id": copy["id"], "seq": 2, "output": 1})
        await peer.drain()

    def on_state(state: str) -> None:
        if state == "reconnecting":
            raise RuntimeError("a bug in the application's callback")

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.05), on_state=on_state) as c:  # type: ignore[arg-type]
        assert (await asyncio.wait_for(c.infer("t", "x"), 5)).output == 1


async def test_a_request_over_the_gateways_frame_limit_is_refused_without_closing_the_socket(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()
        welcome = {"type": "welcome", "session": "s1", "resumed": False, "gateway": "g1", "max_frame_bytes": 200}
        await peer.send(welcome)
        while True:
            infer = await peer.recv()
            await peer.send({"type": "result", "id": infer["id"], "seq": 1, "output": len(infer["input"])})

    server = await scripted(script)
    async with Client(server.url) as c:
        with pytest.raises(RequestError) as e:
            await c.infer("t", "x" * 300)
        assert e.value.code == "invalid_request"
        assert "at most 200" in (e.value.message or "")
        assert (await asyncio.wait_for(c.infer("t", "small"), 5)).output == 5
    assert [f["input"] for f in server.sent("infer")] == ["small"]


async def test_a_refused_request_admitted_meanwhile_is_sent_again_when_the_session_is_lost(scripted: Any) -> None:
    """Refused, then its `accepted` came after all (the admission's answer was lost); then the connection drops and the
    session cannot be resumed: the request must be sent again on the new session, not left to time out."""

    async def script(peer: Peer) -> None:
        await peer.welcome(resumed=False)
        infer = await peer.recv()
        if peer.n == 0:
            await peer.send(refusal(infer["id"], "unavailable", 2000))
            await asyncio.sleep(0.1)  # the client takes the refusal: it waits to send the request again
            await peer.accept(infer)
            await asyncio.sleep(0.1)
            await peer.ws.close(1012, "restart")
            return
        await peer.send({"type": "result", "id": infer["id"], "seq": 1, "output": "again"})
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.05)) as c:
        assert (await asyncio.wait_for(c.infer("t", "x"), 5)).output == "again"


async def test_a_stream_cancelled_before_it_is_iterated_is_never_sent(scripted: Any) -> None:
    server = await scripted(welcome_then_listen)
    async with Client(server.url) as c:
        s = c.stream("t", "x")
        await s.cancel()
        with pytest.raises(RequestError) as e:
            async for _ in s:
                pass
        assert e.value.code == "cancelled"
        await asyncio.sleep(0.2)
    assert server.sent("infer") == [] and server.sent("cancel") == []


async def test_a_request_given_up_on_while_disconnected_is_cancelled_once_the_session_resumes(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.welcome(resumed=peer.n > 0)
        if peer.n == 0:
            infer = await peer.recv()
            await peer.accept(infer)
            await asyncio.sleep(0.2)
            await peer.ws.close(1012, "restart")
            return
        await peer.drain()

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=1.0, max_s=1.0)) as c:  # reconnects 0.5-1 s later
        with pytest.raises(RequestTimeout):
            await c.infer("t", "x", request_id="slow", timeout_s=0.4)  # gives up while disconnected
        t0 = time.monotonic()
        while not server.sent("cancel") and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.02)
    assert server.sent("cancel") == [{"type": "cancel", "id": "slow"}]


async def test_a_request_over_a_new_gateways_smaller_frame_limit_fails_alone(scripted: Any) -> None:
    async def script(peer: Peer) -> None:
        await peer.recv()
        limit = 10_000 if peer.n == 0 else 200
        await peer.send({"type": "welcome", "session": "s1", "resumed": True, "max_frame_bytes": limit})
        if peer.n == 0:
            await peer.recv()
            await peer.ws.close(1012, "restart")
            return
        while True:
            infer = await peer.recv()
            await peer.send({"type": "result", "id": infer["id"], "seq": 9, "output": len(infer["input"])})

    server = await scripted(script)
    async with Client(server.url, backoff=Backoff(base_s=0.05)) as c:
        with pytest.raises(RequestError) as e:
            await asyncio.wait_for(c.infer("t", "x" * 1000), 5)  # fits the first gateway, not the second
        assert e.value.code == "invalid_request"
        assert (await asyncio.wait_for(c.infer("t", "small"), 5)).output == 5


async def test_a_stream_dropped_without_being_iterated_frees_its_request_id(scripted: Any) -> None:
    server = await scripted(welcome_then_listen)
    async with Client(server.url) as c:
        c.stream("t", "never iterated", request_id="s1")
        gc.collect()
        kept = c.stream("t", "this one is kept", request_id="s1")  # before: "already in use by this client"
        assert kept.id == "s1"
        with pytest.raises(ValueError, match="already in use"):
            c.stream("t", "a second while the first is alive", request_id="s1")
