"""Host header allowlist, against DNS rebinding: a web page whose name its owner re-points at the gateway's address
makes the browser send that name as `Host` (and as the page's own origin), so the origin rule alone lets the page
drive a gateway on the visitor's machine or network. A gateway answers only the names it is reached by.

Always answered: an IP address (`127.0.0.1:8000`, `[::1]`, a pod's IP as the kubelet and Prometheus use) and
`localhost`, which no rebinding page can make a browser send, since rebinding needs a name of the attacker's. Other
names only if listed in `allowed_hosts` (`*.example.com` for a domain's subdomains; `*` answers every name). The chart
lists its Service's names and its Ingress hosts.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.hosts")

_NAME = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")
_PORT = re.compile(r":[0-9]{1,5}")
REFUSAL = b"host not allowed: list the names this gateway is reached by in RTAI_GW_ALLOWED_HOSTS\n"


def host_name(header: str) -> str | None:
    """The name or address in a Host header, lower case, without its port or one trailing dot; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1 :] and not _PORT.fullmatch(value[end + 1 :])):
            return None
        return _address(value[1:end])
    name, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    if port and not port.isdigit():
        return None
    name = name.removesuffix(".")
    if (address := _address(name)) is not None:
        return address
    return name if _NAME.fullmatch(name) else None


def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def host_allowed(header: str | None, allowed: Sequence[str]) -> bool:
    if "*" in allowed:
        return True
    name = host_name(header) if header else None
    if name is None:
        return False  # none (HTTP/1.1 requires one) or malformed: only a client that is no browser sends that
    if name == "localhost" or _address(name) is not None:
        return True
    return any(name == a or (a.startswith("*.") and name.endswith(a[1:])) for a in allowed)


class TrustedHosts:
    """Outermost ASGI layer: a request or socket for a name not allowed is refused before anything else runs, HTTP
    with 400, a WebSocket before its upgrade (HTTP 403, as a refused origin)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        if len(hosts) == 1 and host_allowed(hosts[0], self.allowed):
            await self.app(scope, receive, send)
            return
        log.info("host.refused", host=",".join(hosts)[:200], path=scope["path"][:200])
        guard = scope.get("state", {}).get("guard")
        if guard is not None:
            guard.metrics.policy_closes.labels("host").inc()
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
            return
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(REFUSAL)).encode())]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": REFUSAL})
