"""rtai telemetry: structlog logging, OpenTelemetry tracing and shared Prometheus metric pieces."""
