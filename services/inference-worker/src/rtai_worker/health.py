"""A minimal HTTP server for /healthz, /readyz and /metrics.

Hand-written on asyncio streams on purpose: the worker needs three GET routes, and a full web server would bring its
own signal handling that fights the worker's SIGTERM drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import orjson

from rtai_telemetry.metrics import CONTENT_TYPE_LATEST, render
from rtai_worker.metrics import WorkerMetrics

MAX_REQUEST_BYTES = 8192


class HealthServer:
    def __init__(self, host: str, port: int, metrics: WorkerMetrics, ready: Callable[[], list[str]]) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._ready = ready
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            if len(head) > MAX_REQUEST_BYTES:
                raise ValueError("request too large")
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            path = parts[1].split(b"?")[0] if len(parts) >= 2 else b""
            status, ctype, body = self._route(path)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n".encode()
                + b"Connection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except Exception:  # a broken probe connection is not worth a log line
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, path: bytes) -> tuple[str, str, bytes]:
        if path == b"/healthz":
            return "200 OK", "application/json", b'{"status":"ok"}'
        if path == b"/readyz":
            problems = self._ready()
            if problems:
                return (
                    "503 Service Unavailable",
                    "application/json",
                    orjson.dumps({"status": "not ready", "problems": problems}),
                )
            return "200 OK", "application/json", b'{"status":"ready"}'
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, render(self._metrics.registry)
        return "404 Not Found", "text/plain", b"not found"
