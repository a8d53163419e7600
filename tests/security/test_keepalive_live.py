"""Keepalive: a peer that stops answering WebSocket pings (a dead NAT, a frozen client) is closed, not kept forever."""

from __future__ import annotations

import base64
import os
import socket
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
