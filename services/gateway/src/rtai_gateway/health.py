"""Health endpoints. Readiness proves the data path (a Redis write and read, the reply reader running), not just a
live process, and goes false while draining so a load balancer stops sending new sockets. It rides out a Redis outage
shorter than `unready_after_redis_down_s` (a failover)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rtai_gateway.origin import origin_allowed
from rtai_gateway.runtime import Runtime
from rtai_telemetry.metrics import CONTENT_TYPE_LATEST, render


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    rt: Runtime = request.state.rt
    problems = []
    if rt.draining:
        problems.append("draining")
    if not rt.reader_ready:
        problems.append("reply reader not running")
    # A reader that fails while Redis answers everything else (its reads refused): Redis answered a refresh after the
    # reader had been silent as long as an outage is ridden out (and two of its blocking reads). In an outage the
    # refreshes stop too, and the rule below decides alone, so a failover takes no gateway out early.
    limit_s = max(rt.settings.unready_after_redis_down_s, 2 * rt.settings.sessions.reply_block_ms / 1000)
    answered = rt.catalog.last_good_refresh
    if answered is not None and answered - rt.reader.last_read >= limit_s:
        problems.append(f"reply reader has not read its stream for {rt.reader.silent_for_s():.0f} s")
    down_s = rt.catalog.unreachable_for_s()
    # The catalog proves the data path (a Redis write and read) every refresh interval; reading its verdict keeps
    # this probe instant even while Redis hangs. Every gateway shares the one Redis, so a short outage (a failover)
    # would take them all out of rotation at once and the ingress would answer new sockets with a bare 503; a
    # gateway in rotation answers them `unavailable`, which clients retry. A longer outage (this gateway cut off from
    # Redis, say) takes it out; one that never reached Redis is never ready.
    if down_s is None:
        problems.append("redis never reached")
    elif down_s >= rt.settings.unready_after_redis_down_s:
        problems.append(f"redis unreachable for {down_s:.0f} s")
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready", "gateway": rt.settings.gateway_id})


async def metrics(request: Request) -> Response:
    rt: Runtime = request.state.rt
    return Response(render(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def tasks(request: Request) -> Response:
    rt: Runtime = request.state.rt
    cat = rt.catalog
    headers = {"Vary": "Origin"}
    origin = request.headers.get("origin")
    if origin is not None and origin_allowed(origin, request.headers.get("host"), rt.settings.allowed_origins):
        # A front end the sockets accept (`allowed_origins`) may list the tasks too: the browser module's `tasks()`
        # is a cross-origin fetch from such a page. A simple GET, so no preflight to answer.
        headers["Access-Control-Allow-Origin"] = origin
    return JSONResponse(
        {
            "tasks": [
                {
                    "task": t,
                    "model": info.model,
                    "streaming": info.streaming,
                    "max_input_chars": info.max_input_chars,
                    "workers": cat.workers.get(t, 0),
                }
                for t, info in sorted(cat.registered.items())
                if cat.accepting(t) is not None
            ]
        },
        headers=headers,
    )
