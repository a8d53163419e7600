"""permessage-deflate (RFC 7692): browsers always offer it. The gateway declines it by default, and clients talk
uncompressed (each compressing socket costs the gateway zlib state and CPU per frame: docs/performance.md); with
`limits.per_message_deflate` on it accepts the extension and serves through it."""

from __future__ import annotations

import json

import websockets

from tests.support import procs
from tests.support.redis_server import RedisHandle


async def _extension_and_label(g: procs.Service) -> tuple[str | None, str]:
    # websockets offers permessage-deflate by default, as a browser does.
    async with websockets.connect(f"ws://127.0.0.1:{g.port}/v1/ws", compression="deflate") as ws:
        extension = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"type": "infer", "id": "r1", "task": "sentiment", "input": "I love this " * 40}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] in ("result", "error"):
                assert frame["type"] == "result", frame
                return extension, str(frame["output"]["label"])


async def test_compression_is_declined_by_default_and_negotiated_when_on(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    plain, _ = procs.vader_stack(redis_server.url, prefix, services)
    env = procs.redis_env_for_url(redis_server.url)
    deflating = procs.gateway(env, prefix, LIMITS__PER_MESSAGE_DEFLATE="true").start()
    services.append(deflating)

    assert await _extension_and_label(plain) == (None, "positive")
    extension, label = await _extension_and_label(deflating)
    assert extension is not None and extension.startswith("permessage-deflate"), extension
    assert label == "positive"
