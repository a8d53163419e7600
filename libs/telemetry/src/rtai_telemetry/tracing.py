"""OpenTelemetry setup from the standard OTEL_* variables, and trace context carried in message headers.

Tracing is off (a no-op tracer) unless OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) names a
collector, so the default costs nothing; OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none turn it off regardless.
The exporter is OTLP over HTTP/protobuf and reads the other standard OTEL_EXPORTER_OTLP_* variables itself.
`RTAI_TRACE_FILE` writes spans as JSON lines to a file, for tests and local debugging.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from typing import IO

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """Writes one JSON object per finished span; enough to check a trace's shape across processes."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                ctx = span.get_span_context()
                if ctx is None:
                    continue
                record = {
                    "name": span.name,
                    "trace_id": format(ctx.trace_id, "032x"),
                    "span_id": format(ctx.span_id, "016x"),
                    "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
                    "links": [format(link.context.span_id, "016x") for link in span.links],
                    "service": span.resource.attributes.get("service.name"),
                    "attributes": {
                        k: v for k, v in (span.attributes or {}).items() if isinstance(v, str | int | float | bool)
                    },
                }
                self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


_provider: TracerProvider | None = None


def setup_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider if the environment asks for one. Returns whether tracing is on."""
    global _provider
    env = os.environ if env is None else env
    trace_file = env.get("RTAI_TRACE_FILE")
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    disabled = env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER") == "none"
    if disabled or not (trace_file or endpoint):
        return False
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    if trace_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(trace_file)))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    return True


def tracing_enabled() -> bool:
    """Whether spans are recorded: hot paths skip building spans and headers entirely when they are not."""
    return _provider is not None


def shutdown_tracing() -> None:
    if _provider is not None:
        _provider.shutdown()


def inject_headers(headers: MutableMapping[str, str], ctx: context.Context | None = None) -> None:
    """Write the current (or given) trace context as W3C `traceparent`/`tracestate` into a message's headers."""
    propagate.inject(headers, context=ctx)


def extract_context(headers: Mapping[str, str]) -> context.Context:
    return propagate.extract(headers)


def trace_id_of(headers: Mapping[str, str]) -> str | None:
    """The trace id in a message's W3C `traceparent` header (`00-<trace id>-<span id>-<flags>`), for log lines."""
    parts = headers.get("traceparent", "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
