"""Host header allowlist, against DNS rebinding: a web page whose name its owner re-points at the gateway's address
makes the browser send that name as `Host` (and as the page's own origin), so the origin rule alone lets the page
drive a gateway on the visitor's machine or network. A gateway answers only the names it is reached by.

Empty `allowed_hosts` (the default): the loopback names when the gateway listens on a loopback address (`make run`,
a developer's gateway: what rebinding attacks), any name otherwise (behind a Service or an Ingress, whose names the
operator lists). The probes and `/metrics` answer any name: the kubelet and Prometheus address the pod by its IP.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.hosts")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
UNCHECKED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def effective_allowed_hosts(configured: Sequence[str], listen_host: str) -> tuple[str, ...]:
    if configured:
        return tuple(configured)
    return LOOPBACK_NAMES if _is_loopback(listen_host) else ("*",)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header: lower case, without the port, the brackets of an IPv6 literal or a trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    return value.rsplit(":", 1)[0].rstrip(".") if value.count(":") == 1 else value.rstrip(".")


def host_allowed(header: str | None, allowed: Sequence[str]) -> bool:
    if "*" in allowed:
        return True
    if not header:
        return False  # HTTP/1.1 requires one; only a client that is no browser omits it
    name = host_name(header)
    return any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed)


class TrustedHosts:
    """Outermost ASGI layer: a request or socket for a name not allowed is refused before anything else runs, HTTP
    with 400, a WebSocket before its upgrade (HTTP 403, as a refused origin)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in UNCHECKED_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if host_allowed(header, self.allowed):
            await self.app(scope, receive, send)
            return
        log.info("host.refused", host=(header or "")[:200], path=scope["path"][:200])
        guard = scope.get("state", {}).get("guard")
        if guard is not None:
            guard.metrics.policy_closes.labels("host").inc()
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        body = b"host not allowed\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": body})
