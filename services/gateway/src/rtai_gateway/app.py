"""The gateway application: `create_app(settings)` builds it; the lifespan owns every resource and task."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.resources import files
from typing import TypedDict

from fastapi import FastAPI
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from rtai_gateway import health, lifecycle, loops
from rtai_gateway.catalog import Catalog
from rtai_gateway.fastpath import WebSocketFastPath
from rtai_gateway.guard import Guard, build_guard
from rtai_gateway.hosts import TrustedHosts
from rtai_gateway.hub import Hub
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.runtime import Runtime
from rtai_gateway.settings import GatewaySettings
from rtai_gateway.ws import websocket_endpoint
from rtai_telemetry.heap import prepare_heap_for_serving
from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, close_redis, connection_name, create_redis

log = get_logger("rtai_gateway.app")

STATIC_DIR = files("rtai_gateway") / "static"
CLEANUP_S = 5.0
"""How long the lifespan's clean-up (loops stopped, Redis clients closed) may take after the drain."""


class State(TypedDict):
    rt: Runtime
    guard: Guard


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        keys = Keys(settings.redis.prefix)
        # Blocking reads of the reply stream need a socket timeout longer than their block time.
        gw = settings.gateway_id
        redis = create_redis(
            settings.redis,
            block_timeout_s=settings.sessions.reply_block_ms / 1000,
            name=connection_name("rtai-gateway", gw, "commands"),
        )
        probe = create_redis(settings.redis, retries=0, name=connection_name("rtai-gateway", gw, "probe"))
        metrics = GatewayMetrics()
        hub = Hub(settings, redis, keys, metrics)

        async def on_backend_change() -> None:
            await lifecycle.resubmit_all(hub)

        catalog = Catalog(probe, keys, settings.admission, metrics, on_backend_change)
        hub.catalog = catalog
        rt = Runtime(settings=settings, redis=redis, metrics=metrics, hub=hub, catalog=catalog)
        guard = build_guard(settings, hub)
        app.state.rt = rt  # for the shutdown path in __main__, which has no request to read state from
        await catalog.refresh()  # best effort: a gateway starts (not ready) while Redis is down
        tasks = [
            asyncio.create_task(hub.framelog.run(), name="framelog"),
            asyncio.create_task(catalog.run(), name="catalog"),
            asyncio.create_task(loops.read_replies(hub, rt.reader), name="replies"),
            asyncio.create_task(loops.reap(hub), name="reap"),
            asyncio.create_task(loops.heartbeat(hub), name="heartbeat"),
        ]
        await rt.reader.started.wait()
        frozen = prepare_heap_for_serving()  # before ready: the collection it runs first pauses the loop once, here
        rt.reader_ready = True
        log.info(
            "gateway.started",
            gateway=settings.gateway_id,
            redis=settings.redis.describe(),
            port=settings.port,
            frozen_objects=frozen,
        )
        try:
            yield {"rt": rt, "guard": guard}
        finally:
            rt.reader_ready = False
            for t in tasks:
                t.cancel()
            # Bounded: the sockets are drained by now, and a clean-up that hangs must not hold the pod until its
            # SIGKILL (seen once in a fresh-clone run: 25 s after "Waiting for application shutdown", cause not found).
            try:
                async with asyncio.timeout(CLEANUP_S):
                    await asyncio.gather(*tasks, return_exceptions=True)
                    with contextlib.suppress(Exception):
                        await redis.delete(keys.gateway_alive(settings.gateway_id))
                    await close_redis(probe)
                    await close_redis(redis)
            except TimeoutError:
                log.warning("gateway.cleanup_timed_out", pending=[t.get_name() for t in tasks if not t.done()])
            log.info("gateway.stopped", gateway=settings.gateway_id)

    app = FastAPI(title="rtai gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_api_route("/healthz", health.healthz, methods=["GET"])
    app.add_api_route("/readyz", health.readyz, methods=["GET"])
    app.add_api_route("/metrics", health.metrics, methods=["GET"])
    app.add_api_route("/v1/tasks", health.tasks, methods=["GET"])
    app.add_middleware(WebSocketFastPath, path="/v1/ws", endpoint=websocket_endpoint)
    app.add_middleware(TrustedHosts, allowed=settings.allowed_hosts)  # added last: outermost, before the socket's too
    if settings.page:

        async def index() -> Response:
            return FileResponse(str(STATIC_DIR / "index.html"), headers={"Cache-Control": "no-cache"})

        app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
        app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    return app
