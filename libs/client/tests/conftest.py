"""Fixtures for the SDK's tests. Live tests start a real gateway and worker on the session's Redis (root conftest's
`redis_server` and `prefix`); they are skipped when the server packages are not installed (the client member alone)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from scripted_gateway import Script, Scripted
from websockets.asyncio.server import serve


@pytest.fixture
def live(redis_server: Any, prefix: str) -> Iterator[Callable[..., Any]]:
    """Start services: `live("gateway", **env)` or `live("worker", tasks=..., **env)`; stopped by PID afterwards."""
    pytest.importorskip("rtai_gateway")
    pytest.importorskip("rtai_worker")
    from tests.support import procs

    env = procs.redis_env_for_url(redis_server.url)
    started: list[procs.Service] = []

    def start(kind: str, *, wait: bool = True, **extra: str) -> procs.Service:
        if kind == "gateway":
            svc = procs.gateway(env, prefix, **extra)
        else:  # a short drain: a test's worker may be mid-stream when the test ends
            svc = procs.worker(env, prefix, **{"SHUTDOWN_GRACE_S": "2", **extra})
        started.append(svc)
        return svc.start(wait_ready=wait)

    yield start
    for s in reversed(started):
        s.stop(timeout=15)


def ws_url(gateway: Any) -> str:
    return f"ws://127.0.0.1:{gateway.port}/v1/ws"


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Script], Awaitable[Scripted]]]:
    """Start scripted gateways (`await scripted(script)`), closed afterwards; what a script raised fails the test."""
    servers: list[Scripted] = []

    async def start(script: Script) -> Scripted:
        s = Scripted(script)
        s.server = await serve(s._handle, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()
        await s.server.wait_closed()
    for s in servers:
        s.check()
