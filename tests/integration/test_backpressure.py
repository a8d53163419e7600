"""Back-pressure on real Redis and real processes: slow readers, floods and admission limits are refused, not queued."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time

import httpx
import psutil
import redis as redis_sync
import websockets
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from tests.support import procs
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.slow_client import slow_reader_socket
from tests.support.ws_client import Conn


async def test_slow_reader_is_closed_with_1013(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    start(services, procs.worker(env, prefix, MAX_BATCH_SIZE="128"))
    g = start(
        services,
        procs.gateway(env, prefix, LIMITS__SEND_QUEUE_FRAMES="32", ADMISSION__MAX_INFLIGHT_PER_CONNECTION="100000"),
    )
    sock = slow_reader_socket(g.port)
    ws = await websockets.connect(ws_url(g), sock=sock, max_size=None, max_queue=1)
    await ws.send(json.dumps({"type": "hello"}))
    # Send without reading: the server's frames (most of them `rate_limited` refusals) fill the kernel's buffers, then
    # the transport's, then the bounded queue, until it gives up on us. The kernel alone takes a few MB on loopback.
    closed = None
    given_up = False
    for i in range(200_000):
        try:
            await ws.send(json.dumps({"type": "infer", "id": f"s{i}", "task": "sentiment", "input": "x" * 200}))
        except websockets.ConnectionClosed as e:
            closed = e
            break
        if i % 200 == 0:
            await asyncio.sleep(0.01)
        if i % 2000 == 1999:
            given_up = "rtai_gateway_slow_client_closes_total 1.0" in httpx.get(f"{g.base}/metrics").text
            if given_up:
                break
    given_up = given_up or "rtai_gateway_slow_client_closes_total 1.0" in httpx.get(f"{g.base}/metrics").text
    assert given_up, "the slow reader was not closed"
    if closed is None:
        try:
            for _ in range(300_000):  # what the kernel buffered before the close frame
                await ws.recv()
        except websockets.ConnectionClosed as e:
            closed = e
    assert closed is not None
    # The close frame does not wait for the frames the gateway dropped: a client that reads gets it.
    assert closed.rcvd is not None and closed.rcvd.code == 1013, closed
    # The gateway keeps serving others.
    c = await Conn(ws_url(g)).open()
    assert (await c.call("sentiment", "fine")).get("type") == "result"
    await c.close()


async def test_a_client_that_never_reads_is_cut_off(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A client that floods without reading is given up on (1013); as it does not read that close frame either, the
    gateway aborts its socket after `limits.close_timeout_s` instead of keeping it, buffers and all, for as long as
    the client keeps TCP alive."""
    env = procs.redis_env_for_url(redis_server.url)
    # Results of 64 KB: a few hundred fill the socket's buffers and the send queue, and the gateway gives up on the
    # client while frames still wait for it to read them.
    start(services, procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:bulky"))
    g = start(
        services,
        procs.gateway(
            env,
            prefix,
            LIMITS__CLOSE_TIMEOUT_S="1",
            LIMITS__SEND_QUEUE_FRAMES="64",
            ADMISSION__MAX_INFLIGHT_PER_CONNECTION="100000",
        ),
    )
    sock = await asyncio.to_thread(_flood_without_reading, g)
    try:
        gave_up = time.monotonic()
        gateway = psutil.Process(g.pid)
        client_port = sock.getsockname()[1]
        while _has_peer(gateway, client_port) and time.monotonic() - gave_up < 15:
            await asyncio.sleep(0.2)
        held_s = time.monotonic() - gave_up
        assert not _has_peer(gateway, client_port), f"the gateway still holds the socket {held_s:.1f} s after giving up"
        assert "rtai_gateway_aborted_sockets_total 1.0" in httpx.get(f"{g.base}/metrics").text
        c = await Conn(ws_url(g)).open()
        assert (await c.call("sentiment", "still serving")).get("type") == "result"
        await c.close()
    finally:
        sock.close()


def _flood_without_reading(g: procs.Service) -> socket.socket:
    """Open a WebSocket on a plain blocking socket and send requests until the gateway gives up on it, reading
    nothing but the handshake's response (a client library would read the close frame, and answer it). Returns the
    socket, still open."""
    client = ClientProtocol(parse_uri(ws_url(g)))
    sock = slow_reader_socket(g.port)
    sock.settimeout(10)
    client.send_request(client.connect())
    sock.sendall(b"".join(client.data_to_send()))
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # a byte at a time: not one byte past the handshake
    client.receive_data(response)
    assert client.handshake_exc is None, client.handshake_exc
    client.send_text(json.dumps({"type": "hello"}).encode())
    # 300 results of 64 KB (19 MB): more than the socket's buffers and the send queue hold together.
    for i in range(300):
        client.send_text(json.dumps({"type": "infer", "id": f"n{i}", "task": "sentiment", "input": "fine"}).encode())
        sock.sendall(b"".join(client.data_to_send()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "rtai_gateway_slow_client_closes_total 1.0" in httpx.get(f"{g.base}/metrics").text:
            return sock
        time.sleep(0.2)
    sock.close()
    raise AssertionError("300 unread results of 64 KB did not make the gateway give up on the socket")


def _has_peer(process: psutil.Process, port: int) -> bool:
    """Whether `process` has a TCP socket whose remote end is 127.0.0.1:`port`."""
    return any(c.raddr and c.raddr.port == port for c in process.net_connections(kind="tcp"))


async def test_flood_past_backlog_is_refused_not_queued(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix))
    unlimited = {
        "LIMITS__MESSAGES_PER_S": "100000",
        "LIMITS__MESSAGE_BURST": "100000",
        "LIMITS__MAX_INFLIGHT_PER_USER": "1000",
    }
    g = start(services, procs.gateway(env, prefix, ADMISSION__MAX_BACKLOG="50", **unlimited))
    c = await Conn(ws_url(g)).open()
    w.signal(signal.SIGSTOP)
    try:
        rids = [await c.infer("sentiment", f"flood {i}") for i in range(300)]
        await asyncio.sleep(1.0)
        refused = [c.finals(r)[0] for r in rids if c.finals(r)]
        assert len(refused) >= 200
        assert {f["code"] for f in refused} == {"overloaded"}
        assert all(f["retry_after_ms"] > 0 for f in refused)
        r = redis_sync.Redis.from_url(redis_server.url)
        assert r.xlen(f"{prefix}:v1:jobs:sentiment") <= 60, "the queue grew past its limit"
    finally:
        w.signal(signal.SIGCONT)
    for rid in rids:
        assert (await c.final(rid, timeout=20))["type"] in ("result", "error")
        assert len(c.finals(rid)) == 1
    await c.close()


async def test_admission_caps_in_flight_per_connection_and_refuses_on_old_backlog(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """With the worker stalled: a connection's fourth request over a cap of 3 is refused; once the oldest queued job
    is older than the limit, every connection is refused; both as `overloaded` with a retry hint, and both recover."""
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix))
    limits = {
        "ADMISSION__MAX_INFLIGHT_PER_CONNECTION": "3",
        "ADMISSION__MAX_OLDEST_AGE_S": "1.5",
        "LIMITS__MAX_INFLIGHT_PER_USER": "100",
    }
    g = start(services, procs.gateway(env, prefix, **limits))
    c, d = await Conn(ws_url(g)).open(), await Conn(ws_url(g)).open()
    async with procs.stalled(w):
        rids = [await c.infer("sentiment", f"held {i}") for i in range(4)]
        refused = await c.final(rids[3])
        assert (refused["code"], refused["retry_after_ms"] > 0) == ("overloaded", True), refused
        assert "per connection" in refused["message"]
        await asyncio.sleep(2.0)  # the oldest queued job passes 1.5 s (backlog re-read every 0.25 s)
        old = await d.call("sentiment", "behind an old backlog")
        assert (old["type"], old["code"]) == ("error", "overloaded"), old
        assert "waited" in old["message"]
    for rid in rids[:3]:
        assert (await c.final(rid))["type"] == "result"
    # Once the drained backlog is re-read (every 0.25 s, later on a loaded machine) the same request goes through.
    deadline = time.monotonic() + 5
    while (after := await d.call("sentiment", "after the drain"))["type"] == "error" and time.monotonic() < deadline:
        assert after["code"] == "overloaded", after
        await asyncio.sleep(0.25)
    assert after["type"] == "result", after
    await c.close()
    await d.close()
