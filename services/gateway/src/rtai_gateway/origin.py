"""Origin allowlist for browser sockets (cross-site WebSocket hijacking: a page on another site opening a socket
with the visitor's cookies or a token the page obtained).

Only browsers send `Origin`, and they cannot forge it; other clients can, so this protects browser users and is no
authentication. Allowed: no Origin (non-browser clients), the gateway's own origin (its page at `/`), the configured
list, or everything with `*`.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str]) -> bool:
    if origin is None:
        return True
    if "*" in allowed:
        return True
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file://) and garbage
    normalized = f"{parts.scheme}://{parts.netloc}"
    if normalized in allowed:
        return True
    # Same origin: the page this gateway serves at `/` (behind a proxy, the proxy must keep the Host header).
    return host is not None and parts.netloc == host.strip().lower()
