"""With OTEL_EXPORTER_OTLP_ENDPOINT set, spans leave the process over OTLP/HTTP; with nothing set, tracing is off.

The collector here is a small HTTP server on loopback that records what is POSTed to it. The exporter runs in a child
process because a process may install its global tracer provider only once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

CHILD = """
from opentelemetry import trace
from rtai_telemetry.tracing import setup_tracing, shutdown_tracing, tracing_enabled
assert setup_tracing("rtai-test") and tracing_enabled()
with trace.get_tracer("t").start_as_current_span("otlp-probe-span"):
    pass
shutdown_tracing()
"""


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, bytes]]] = []
    """Each fixture makes a subclass with its own list: what one collector got."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Collector", (_Collector,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_spans_are_exported_over_otlp_http(collector: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    endpoint, received = collector
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    env.pop("RTAI_TRACE_FILE", None)
    subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, timeout=60)
    assert [(path, ctype) for path, ctype, _ in received] == [("/v1/traces", "application/x-protobuf")]
    body = received[0][2]
    assert b"otlp-probe-span" in body and b"rtai-test" in body


def test_tracing_is_off_without_an_endpoint() -> None:
    from rtai_telemetry.tracing import setup_tracing

    assert setup_tracing("rtai-test", env={}) is False
    assert (
        setup_tracing("rtai-test", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
        is False
    )
    assert (
        setup_tracing("rtai-test", env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
        is False
    )
