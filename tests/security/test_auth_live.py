"""Authenticated sockets on a JWT gateway: every way to present a token, every refusal with its code, per-user
connection limits, and two users isolated in results and resume."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.security.conftest import JWT_ENV, token
from tests.support import procs
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(redis_server: RedisHandle, module_prefix: str, module_services: list[procs.Service]) -> procs.Service:
    env = procs.redis_env_for_url(redis_server.url)
    tasks = "sentiment=vader,slow=tests.support.fake_models:slow"
    start(module_services, procs.worker(env, module_prefix, tasks=tasks, RTAI_TEST_SLOW_MS="1500"))
    extra = {**JWT_ENV, "AUTH__TIMEOUT_S": "1", "LIMITS__MAX_CONNECTIONS_PER_USER": "2"}
    return start(module_services, procs.gateway(env, module_prefix, **extra))


async def as_user(g: procs.Service, sub: str, hello: dict[str, Any] | None = None) -> Conn:
    return await Conn(ws_url(g)).open(hello, subprotocols=["rtai.v1", f"bearer.{token(sub)}"])


async def refused(g: procs.Service, first: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """Connect, optionally send a frame, and return the error frame; asserts the close code is 1008."""
    ws = await websockets.connect(ws_url(g), **kw)
    if first is not None:
        await ws.send(json.dumps(first))
    err = json.loads(await asyncio.wait_for(ws.recv(), 5))
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008
    return dict(err)


async def test_token_in_subprotocol_header_or_first_frame(gateway: procs.Service) -> None:
    c = await as_user(gateway, "alice")
    assert c.ws.subprotocol == "rtai.v1"  # the bearer entry is never echoed
    assert (await c.call("sentiment", "great"))["type"] == "result"
    await c.close()
    h = await Conn(ws_url(gateway)).open(additional_headers={"Authorization": f"Bearer {token('alice')}"})
    assert (await h.call("sentiment", "great"))["type"] == "result"
    await h.close()
    f = Conn(ws_url(gateway))
    f.ws = await websockets.connect(ws_url(gateway))
    f._reader = asyncio.create_task(f._read())
    await f.send({"type": "auth", "token": token("alice")})
    await f.send({"type": "hello"})
    await f.wait_for(lambda x: x["type"] == "welcome")
    assert (await f.call("sentiment", "great"))["type"] == "result"
    await f.close()


async def test_missing_bad_and_late_credentials_are_refused_1008(gateway: procs.Service) -> None:
    bad_tokens = {
        "expired": token("alice", ttl_s=-120),
        "wrong key": token("alice", secret="another-secret-of-enough-length-0123456789"),
        "wrong audience": token("alice", aud="someone-else"),
        "garbage": "not-a-token",
    }
    for why, bad in bad_tokens.items():
        err = await refused(gateway, subprotocols=["rtai.v1", f"bearer.{bad}"])
        assert err["code"] == "unauthenticated", why
        assert bad not in err["message"]
    err = await refused(gateway, {"type": "hello"})
    assert err["code"] == "unauthenticated"
    err = await refused(gateway)  # nothing within auth.timeout_s
    assert err["code"] == "unauthenticated"
    assert "1s" in err["message"]
    in_url = token("alice")
    ws = await websockets.connect(ws_url(gateway) + "?access_token=" + in_url)  # ignored by default (proxies log URLs)
    await ws.send(json.dumps({"type": "hello"}))
    assert json.loads(await ws.recv())["code"] == "unauthenticated"
    await ws.close()
    # uvicorn logs each handshake's path with its query string; the gateway's own log must not carry the token.
    assert "access_token=[redacted]" in gateway.logs()
    assert in_url not in gateway.logs()
    c = await as_user(gateway, "bob")
    assert (await c.call("sentiment", "still serving"))["type"] == "result"
    await c.close()


async def test_connections_per_user(gateway: procs.Service) -> None:
    first, second = await as_user(gateway, "carol"), await as_user(gateway, "carol")
    err = await refused(gateway, subprotocols=["rtai.v1", f"bearer.{token('carol')}"])
    assert err["code"] == "overloaded"
    other = await as_user(gateway, "dave")
    assert (await other.call("sentiment", "fine"))["type"] == "result"
    await first.close()
    await asyncio.sleep(0.2)
    third = await as_user(gateway, "carol")
    assert (await third.call("sentiment", "fine"))["type"] == "result"
    await asyncio.gather(second.close(), third.close(), other.close())


async def test_two_users_are_isolated_in_results_and_resume(gateway: procs.Service) -> None:
    alice, bob = await as_user(gateway, "erin"), await as_user(gateway, "frank")
    # The same request id from two users: two requests, each answered only to its owner.
    await alice.infer("sentiment", "I love it", rid="same")
    await bob.infer("sentiment", "I hate it", rid="same")
    ra, rb = await alice.final("same"), await bob.final("same")
    assert ra["output"]["label"] == "positive"
    assert rb["output"]["label"] == "negative"
    assert len(alice.finals("same")) == 1
    assert len(bob.finals("same")) == 1
    # Bob cannot cancel Alice's running request, nor see it.
    await alice.infer("slow", "a long one", rid="mine")
    await alice.wait_for(lambda f: f["type"] == "accepted" and f["id"] == "mine")
    n = len(bob.frames)
    await bob.send({"type": "cancel", "id": "mine"})
    err = await bob.wait_for(lambda f: f["type"] == "error" and bob.frames.index(f) >= n)
    assert err["code"] == "invalid_request"
    # Bob presents Alice's session token: he gets a fresh session of his own and none of her frames.
    stolen = await as_user(gateway, "frank", {"type": "hello", "session": alice.session, "last_seq": 0})
    welcome = stolen.frames[0]
    assert welcome["resumed"] is False
    assert welcome["session"] != alice.session
    await asyncio.sleep(0.3)
    assert [f for f in stolen.frames if f["type"] != "welcome"] == []
    # Bob's retry of "same" returns his stored result, never Alice's.
    await stolen.infer("sentiment", "I hate it", rid="same")
    assert (await stolen.final("same"))["output"]["label"] == "negative"
    # Alice herself resumes her session on a new socket and gets her frames, including the slow result.
    alice_seq = alice.last_seq
    await alice.ws.close(code=4000)  # abnormal for the server: the session waits for a resume
    again = await as_user(gateway, "erin", {"type": "hello", "session": alice.session, "last_seq": 0})
    assert again.frames[0]["resumed"] is True
    assert (await again.final("mine", timeout=10))["type"] == "result"
    assert (await again.final("same"))["output"]["label"] == "positive"
    assert again.last_seq >= alice_seq
    await asyncio.gather(again.close(), bob.close(), stolen.close())
