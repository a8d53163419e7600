"""DNS rebinding, on a real gateway: a page whose name is re-pointed at the gateway's address sends that name as
`Host` and as its own origin. The gateway answers IP addresses and `localhost` (no rebinding page can send those)
and the names it is given, and refuses every other name, the socket's upgrade included."""

from __future__ import annotations

import base64
import os
import socket

import httpx
import pytest

from tests.support import procs
from tests.support.redis_server import RedisHandle

pytestmark = pytest.mark.integration


def _status(port: int, path: str, *hosts: str, origin: str | None = None, ws: bool = False) -> int:
    """The status line's code for one request with these Host headers (a raw socket: clients put the name they dial
    there)."""
    lines = [f"GET {path} HTTP/1.1", *(f"Host: {h}" for h in hosts), "Connection: " + ("Upgrade" if ws else "close")]
    if ws:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def _host_refusals(g: procs.Service) -> float:
    for line in httpx.get(f"{g.base}/metrics", timeout=2).text.splitlines():
        if line.startswith('rtai_gateway_policy_closes_total{reason="host"}'):
            return float(line.split()[1])
    return 0.0


def test_a_gateway_answers_addresses_and_localhost_and_refuses_a_rebound_name(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    g = procs.gateway(env, prefix).start()
    sec_services.append(g)
    p = g.port
    rebound = f"rebound.example:{p}"
    for name in (f"localhost:{p}", f"127.0.0.1:{p}", f"[::1]:{p}", "LOCALHOST.", "10.1.2.3:8000"):
        assert _status(p, "/", name) == 200, name
    assert _status(p, "/", rebound) == 400
    assert _status(p, "/v1/tasks", rebound, origin=f"http://{rebound}") == 400
    assert _status(p, "/metrics", rebound) == 400
    assert _status(p, "/v1/ws", rebound, origin=f"http://{rebound}", ws=True) == 403  # refused before the upgrade
    assert _status(p, "/", f"127.0.0.1:{p}", rebound) == 400, "two Host headers"
    assert _status(p, "/v1/ws", f"127.0.0.1:{p}", origin=f"http://127.0.0.1:{p}", ws=True) == 101
    assert _host_refusals(g) == 5


def test_a_gateway_answers_the_names_it_is_given_and_no_other(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    g = procs.gateway(env, prefix, ALLOWED_HOSTS="gw.example, *.apps.example").start()
    sec_services.append(g)
    p = g.port
    assert _status(p, "/", "gw.example:8443") == 200
    assert _status(p, "/v1/ws", "chat.apps.example", origin="https://chat.apps.example", ws=True) == 101
    assert _status(p, "/", f"127.0.0.1:{p}") == 200
    assert _status(p, "/", "apps.example") == 400, "*.apps.example is its subdomains only"
    assert _status(p, "/", "evil-gw.example") == 400
