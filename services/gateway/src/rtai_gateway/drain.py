"""Graceful shutdown: on SIGTERM stop taking work, let in-flight requests finish, then close sockets with 1012.

uvicorn alone would close WebSockets at once; Kubernetes gives us `terminationGracePeriodSeconds`, so we spend up to
`drain_s` of it finishing what clients are waiting for, while readiness is false so no new sockets arrive.
"""

from __future__ import annotations

import asyncio
import time
from types import FrameType

import uvicorn

from rtai_gateway.connection import WS_1012_SERVICE_RESTART
from rtai_gateway.runtime import Runtime
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.drain")


async def drain(rt: Runtime) -> None:
    rt.draining = True
    deadline = time.monotonic() + rt.settings.drain_s
    log.info(
        "gateway.draining", inflight=len(rt.hub.pending), connections=len(rt.connections), drain_s=rt.settings.drain_s
    )
    while rt.hub.pending and time.monotonic() < deadline:  # noqa: ASYNC110 - polls two conditions, one a clock
        await asyncio.sleep(0.05)
    for conn in list(rt.connections):
        conn.close(WS_1012_SERVICE_RESTART, "gateway restarting: reconnect and resume")
    # Give writers a moment to flush the close frames.
    for _ in range(40):
        if not rt.connections:
            break
        await asyncio.sleep(0.05)
    log.info("gateway.drained", unfinished=len(rt.hub.pending))


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM/SIGINT drains before exiting; a second one exits at once."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._drain_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.loaded_app
        rt: Runtime | None = getattr(getattr(getattr(app, "app", app), "state", None), "rt", None) if app else None
        if self._drain_task is not None or rt is None or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_task = self._loop.create_task(self._drain_then_exit(rt, sig, frame))

    async def _drain_then_exit(self, rt: Runtime, sig: int, frame: FrameType | None) -> None:
        try:
            await drain(rt)
        finally:
            super().handle_exit(sig, frame)
