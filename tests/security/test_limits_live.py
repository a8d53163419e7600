"""Every limit of an anonymous gateway, on real processes: each refusal has its exact documented code, and the
gateway keeps serving other clients afterwards."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.security.conftest import metrics_text
from tests.support import procs
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

pytestmark = pytest.mark.integration

SLOW_MS = 1500
LIMITS = {
    "LIMITS__MAX_FRAME_BYTES": "16384",
    "LIMITS__MESSAGES_PER_S": "5",
    "LIMITS__MESSAGE_BURST": "10",
    "LIMITS__FIRST_MESSAGE_TIMEOUT_S": "1",
    "LIMITS__HANDSHAKE_TIMEOUT_S": "1",
    "LIMITS__IDLE_TIMEOUT_S": "1",
    "LIMITS__MAX_CONNECTIONS": "12",
    "LIMITS__MAX_INFLIGHT_PER_USER": "1",
    "LIMITS__MAX_QUEUED_PER_USER": "1",
    "ALLOWED_ORIGINS": "https://app.example",
}


@pytest.fixture(scope="module")
def gateway(redis_server: RedisHandle, module_prefix: str, module_services: list[procs.Service]) -> procs.Service:
    env = procs.redis_env_for_url(redis_server.url)
    tasks = "sentiment=vader,slow=tests.support.fake_models:slow"
    start(module_services, procs.worker(env, module_prefix, tasks=tasks, RTAI_TEST_SLOW_MS=str(SLOW_MS)))
    return start(module_services, procs.gateway(env, module_prefix, **LIMITS))


async def still_serving(g: procs.Service) -> None:
    c = await Conn(ws_url(g)).open()
    r = await c.call("sentiment", "I love this")
    assert r["type"] == "result"
    assert r["output"]["label"] == "positive"
    await c.close()


async def next_error(c: Conn, after: int) -> dict[str, object]:
    return await c.wait_for(lambda f: f["type"] == "error" and c.frames.index(f) >= after, 5)


async def test_oversized_frame_closes_1009(gateway: procs.Service) -> None:
    c = await Conn(ws_url(gateway)).open()
    await c.send(json.dumps({"type": "infer", "id": "big", "task": "sentiment", "input": "a" * 20_000}))
    await asyncio.wait_for(c.closed.wait(), 5)
    assert c.close_code == 1009
    await still_serving(gateway)


async def test_deep_json_long_input_and_binary_frames_are_invalid_requests(gateway: procs.Service) -> None:
    c = await Conn(ws_url(gateway)).open()
    cases: list[tuple[str | bytes, str]] = [
        ('{"type":"infer","id":"deep","task":"sentiment","input":"x","options":' + "[" * 40 + "]" * 40 + "}", "deep"),
        (json.dumps({"type": "infer", "id": "long", "task": "sentiment", "input": "a" * 5001}), "long"),
        (b"\x00\x01binary", ""),
    ]
    for raw, rid in cases:
        n = len(c.frames)
        await c.ws.send(raw)
        err = await next_error(c, n)
        assert err["code"] == "invalid_request", err
        assert err.get("id") == (rid or None)
    await c.close()
    await still_serving(gateway)


async def test_rate_limit_answers_rate_limited_with_retry_after_then_recovers(gateway: procs.Service) -> None:
    c = await Conn(ws_url(gateway)).open()  # the hello took one token of ten
    for i in range(12):  # cancels of unknown ids: cheap frames, each answered, none holding an in-flight slot
        await c.send({"type": "cancel", "id": f"rl{i}"})
    answers = [await c.final(f"rl{i}") for i in range(12)]
    assert [a["code"] for a in answers] == ["invalid_request"] * 9 + ["rate_limited"] * 3
    waits = [int(a["retry_after_ms"]) for a in answers[9:]]
    assert all(0 < w <= 200 for w in waits)  # 5 frames/s: the next token within 200 ms
    await asyncio.sleep(max(waits) / 1000 + 0.05)
    assert (await c.call("sentiment", "fine again"))["type"] == "result"
    await c.close()
    await still_serving(gateway)


async def test_origin_allowlist(gateway: procs.Service) -> None:
    with pytest.raises(InvalidStatus) as e:
        await websockets.connect(ws_url(gateway), origin="https://evil.example")  # type: ignore[arg-type]
    assert e.value.response.status_code == 403
    for origin in ("https://app.example", f"http://127.0.0.1:{gateway.port}"):
        c = await Conn(ws_url(gateway)).open(origin=origin)
        assert (await c.call("sentiment", "good"))["type"] == "result"
        await c.close()
    assert 'rtai_gateway_policy_closes_total{reason="origin"} 1.0' in await metrics_text(gateway)


def test_the_task_list_is_shared_with_the_origins_the_sockets_accept(gateway: procs.Service) -> None:
    """The browser module's `tasks()` is a cross-origin fetch from a front end in `allowed_origins`: such a page may
    read the answer (CORS), a page elsewhere may not."""
    for origin, allowed in (("https://app.example", True), ("https://evil.example", False)):
        r = httpx.get(f"{gateway.base}/v1/tasks", headers={"Origin": origin}, timeout=5)
        assert r.status_code == 200
        assert r.headers.get("access-control-allow-origin") == (origin if allowed else None), origin
        assert "Origin" in r.headers["vary"]
    assert "access-control-allow-origin" not in httpx.get(f"{gateway.base}/v1/tasks", timeout=5).headers


async def _wait_no_connections(g: procs.Service) -> None:
    deadline = time.monotonic() + 10
    while "rtai_gateway_connections 0.0" not in await metrics_text(g):
        assert time.monotonic() < deadline, "connections of earlier tests did not close"
        await asyncio.sleep(0.1)


async def test_gateway_connection_cap_closes_1013(gateway: procs.Service) -> None:
    await _wait_no_connections(gateway)
    conns = [await Conn(ws_url(gateway)).open() for _ in range(12)]
    extra = Conn(ws_url(gateway))
    extra.ws = await websockets.connect(ws_url(gateway))
    reader = asyncio.create_task(extra._read())
    await asyncio.wait_for(extra.closed.wait(), 5)
    await reader
    assert extra.close_code == 1013
    assert extra.frames[0]["code"] == "overloaded"
    await conns[0].close()
    await _wait_for_connections(gateway, 11)
    c = await Conn(ws_url(gateway)).open()
    assert (await c.call("sentiment", "room again"))["type"] == "result"
    await asyncio.gather(c.close(), *(x.close() for x in conns[1:]))


async def _wait_for_connections(g: procs.Service, n: int) -> None:
    deadline = time.monotonic() + 5
    while f"rtai_gateway_connections {n}.0" not in await metrics_text(g):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_silent_socket_is_closed_1008_after_the_first_message_timeout(gateway: procs.Service) -> None:
    ws = await websockets.connect(ws_url(gateway))
    started = time.monotonic()
    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert frame["code"] == "invalid_request"
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008
    assert 0.8 < time.monotonic() - started < 4
    await still_serving(gateway)


async def test_idle_socket_is_closed_1000_but_not_while_it_waits_for_results(gateway: procs.Service) -> None:
    c = await Conn(ws_url(gateway)).open()
    r = await c.call("slow", "this takes longer than the idle timeout", timeout=10)
    assert r["type"] == "result"  # 1.5 s in flight with a 1 s idle timeout: still open
    await asyncio.wait_for(c.closed.wait(), 5)
    assert c.close_code == 1000
    await still_serving(gateway)


async def test_per_user_inflight_cap_queues_then_refuses_overloaded(gateway: procs.Service) -> None:
    c = await Conn(ws_url(gateway)).open()
    for rid in ("q1", "q2", "q3"):
        await c.infer("slow", f"{rid} slow one", rid=rid)
    third = await c.final("q3", timeout=5)
    assert third["code"] == "overloaded"
    assert third["retry_after_ms"] > 0
    assert "accepted" not in [f["type"] for f in c.by_id["q2"]]  # waits at the gateway, not in the stream
    await still_serving(gateway)  # another user is not held up by this user's queue
    assert (await c.final("q1", timeout=10))["type"] == "result"
    assert (await c.final("q2", timeout=10))["type"] == "result"
    await c.close()


def _closed_by_server_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed the connection (recv gives b""), or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("before", "sent"),
    [
        (b"", b""),
        (b"", b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websock"),
        (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: 127"),
    ],
    ids=["silent", "dribbled-headers", "dribbled-after-a-kept-alive-request"],
)
async def test_an_unfinished_handshake_is_closed(gateway: procs.Service, before: bytes, sent: bytes) -> None:
    """A connection that never completes its upgrade request (slowloris), or the next request's head on a kept-alive
    connection, is closed after the handshake timeout (1 s here), not held for ever; the client that does complete one
    is served."""
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        if before:
            sock.sendall(before)
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "the first request is served"
        sock.sendall(sent)
        closed_after = await asyncio.to_thread(_closed_by_server_within, sock, 6.0)
    assert closed_after is not None, "the gateway held an unfinished handshake open"
    assert closed_after < 4.0, closed_after
    await still_serving(gateway)
