"""Unresponsive peers: one that stops answering WebSocket pings (a dead NAT, a frozen client), or reads the gateway's
close frame and never answers it, is closed, not kept forever."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

import httpx
import pytest

from tests.support import procs
from tests.support.redis_server import RedisHandle

pytestmark = pytest.mark.integration


def _handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    # One masked text frame, {"type":"hello"}, so the session starts; after that this peer never reads or pongs.
    payload = b'{"type":"hello"}'
    mask = os.urandom(4)
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    return sock


def _connections(g: procs.Service) -> float:
    for line in httpx.get(f"{g.base}/metrics", timeout=2).text.splitlines():
        if line.startswith("rtai_gateway_connections "):
            return float(line.split()[1])
    raise AssertionError("no connections gauge")


def test_a_peer_that_never_answers_pings_is_closed(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    sec_services.append(procs.worker(env, prefix).start())
    g = procs.gateway(env, prefix, LIMITS__PING_INTERVAL_S="0.5", LIMITS__PING_TIMEOUT_S="0.5").start()
    sec_services.append(g)
    sock = _handshake(g.port)
    try:
        deadline = time.monotonic() + 2
        while _connections(g) != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _connections(g) == 1
        # Within ping interval + ping timeout (1 s) and a margin, the gateway gives up on the silent peer.
        deadline = time.monotonic() + 6
        while _connections(g) != 0:
            assert time.monotonic() < deadline, "a peer that never answered pings is still connected"
            time.sleep(0.1)
        sock.settimeout(2)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        assert b"\x89" in data, "the gateway never pinged"  # 0x89: a ping frame was sent before giving up
    finally:
        sock.close()


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each whole server frame (unmasked) at the start of `data`."""
    frames = []
    while len(data) >= 2:
        size, head = data[1] & 0x7F, 2
        if size == 126:
            (size,), head = struct.unpack("!H", data[2:4]), 4
        elif size == 127:
            (size,), head = struct.unpack("!Q", data[2:10]), 10
        if len(data) < head + size:
            break
        frames.append((data[0] & 0x0F, data[head : head + size]))
        data = data[head + size :]
    return frames


def test_a_peer_that_never_answers_the_close_frame_is_reset(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service]
) -> None:
    """The gateway closes an idle socket (1000); the peer reads the close frame but never sends its own. After
    `limits.close_timeout_s` the gateway aborts the socket (a reset, counted) rather than closing it gracefully: for
    a peer that has also stopped reading, a graceful close leaves the bytes it did not read in an orphaned kernel
    socket."""
    env = procs.redis_env_for_url(redis_server.url)
    g = procs.gateway(env, prefix, LIMITS__IDLE_TIMEOUT_S="0.5", LIMITS__CLOSE_TIMEOUT_S="1").start()
    sec_services.append(g)
    sock = _handshake(g.port)
    try:
        sock.settimeout(10)
        data = b""
        close_seen_at = None
        reset_at = None
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if close_seen_at is None and any(op == 0x8 for op, _ in _frames(data)):
                    close_seen_at = time.monotonic()
        except ConnectionResetError:
            reset_at = time.monotonic()
        closes = [payload for op, payload in _frames(data) if op == 0x8]
        assert closes, f"no close frame in {data[:200]!r}"
        assert struct.unpack("!H", closes[0][:2])[0] == 1000, closes[0]
        assert close_seen_at is not None
        assert reset_at is not None, "the gateway closed gracefully instead of resetting the socket"
        assert 0.5 < reset_at - close_seen_at < 5, reset_at - close_seen_at  # 1 s, and the client reads late
        assert "rtai_gateway_aborted_sockets_total 1.0" in httpx.get(f"{g.base}/metrics", timeout=2).text
    finally:
        sock.close()
