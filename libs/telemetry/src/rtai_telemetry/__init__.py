"""rtai_telemetry."""
