"""DNS rebinding, on a real gateway: a page whose name is re-pointed at the gateway's address sends that name as
`Host` and as its own origin. A gateway on loopback answers only the loopback names; one given `allowed_hosts` only
those; the probes and `/metrics` answer any name (the kubelet and Prometheus address the pod by its IP)."""

from __future__ import annotations

import base64
import os
import socket

import httpx
import pytest

from tests.support import procs
from tests.support.redis_server import RedisHandle

pytestmark = pytest.mark.integration


def _status(port: int, path: str, host: str, *, origin: str | None = None, ws: bool = False) -> int:
    """The status line's code for one request with this Host (a raw socket: clients put the name they dial there)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close" if not ws else "Connection: Upgrade"]
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


def test_a_gateway_on_loopback_answers_only_the_loopback_names(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    g = procs.gateway(env, prefix).start()
    sec_services.append(g)
    p = g.port
    rebound = f"rebound.example:{p}"
    for name in (f"localhost:{p}", f"127.0.0.1:{p}", f"[::1]:{p}", "LOCALHOST."):
        assert _status(p, "/", name) == 200, name
    assert _status(p, "/", rebound) == 400
    assert _status(p, "/v1/tasks", rebound, origin=f"http://{rebound}") == 400
    assert _status(p, "/v1/ws", rebound, origin=f"http://{rebound}", ws=True) == 403  # refused before the upgrade
    assert _status(p, "/v1/ws", f"127.0.0.1:{p}", origin=f"http://127.0.0.1:{p}", ws=True) == 101
    for probe in ("/healthz", "/metrics"):
        assert _status(p, probe, "10.1.2.3:8000") == 200, probe
    assert _host_refusals(g) == 3


def test_a_gateway_answers_the_names_it_is_given_and_no_other(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    g = procs.gateway(env, prefix, ALLOWED_HOSTS="gw.example, *.apps.example").start()
    sec_services.append(g)
    p = g.port
    assert _status(p, "/", "gw.example:8443") == 200
    assert _status(p, "/v1/ws", "chat.apps.example", origin="https://chat.apps.example", ws=True) == 101
    assert _status(p, "/", f"127.0.0.1:{p}") == 400, "a listed name replaces the loopback default"
    assert _status(p, "/", "apps.example") == 400, "*.apps.example is its subdomains only"
    assert _status(p, "/", "evil-gw.example") == 400
