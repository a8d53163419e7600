"""The gateway's Prometheus metrics (docs/metrics.md lists them with their meaning)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rtai_protocol import ErrorCode
from rtai_telemetry.metrics import LATENCY_BUCKETS, BacklogGauges, RedisGauges

OUTCOMES = ("ok", *(str(c) for c in ErrorCode))
REFUSAL_REASONS = ("backlog", "age", "inflight", "unavailable", "no_workers")
INVALID_FRAME_REASONS = ("shape", "binary", "late_hello")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge("rtai_gateway_connections", "Open WebSocket connections", registry=r)
        self.requests = Counter(
            "rtai_gateway_requests",
            "Final frames sent, by task and outcome (ok or error code)",
            ["task", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "rtai_gateway_request_duration_seconds",
            "Request received -> final frame sent",
            ["task", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "rtai_gateway_first_chunk_seconds",
            "Request received -> first chunk sent",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("rtai_gateway_inflight_requests", "Requests accepted and not yet finished", registry=r)
        self.refusals = Counter(
            "rtai_gateway_admission_refusals", "Requests refused by admission control", ["task", "reason"], registry=r
        )
        self.slow_closes = Counter(
            "rtai_gateway_slow_client_closes", "Sockets closed 1013 because their send queue was full", registry=r
        )
        self.replies_rejected = Counter(
            "rtai_gateway_replies_rejected",
            "Worker replies dropped because Redis refused to log them, retries exhausted",
            registry=r,
        )
        self.aborted_sockets = Counter(
            "rtai_gateway_aborted_sockets",
            "Sockets aborted because they were still open limits.close_timeout_s after the gateway began closing them",
            registry=r,
        )
        self.invalid_frames = Counter(
            "rtai_gateway_invalid_frames", "Client frames refused as invalid", ["reason"], registry=r
        )
        self.resubmits = Counter(
            "rtai_gateway_resubmits",
            "Jobs re-submitted after a suspected loss or a session takeover",
            ["task"],
            registry=r,
        )
        self.backlog = BacklogGauges(r)
        self.redis = RedisGauges(r)

        self._tasks: set[str] = set()
        # Series exist at zero from the start: a counter first seen at 1 shows no rate() or increase().
        for reason in INVALID_FRAME_REASONS:
            self.invalid_frames.labels(reason)
        self.requests.labels("unknown", ErrorCode.UNKNOWN_TASK)
        self.duration.labels("unknown", ErrorCode.UNKNOWN_TASK)

    def init_task(self, task: str) -> None:
        """Create a task's series at zero, once, when the gateway first learns of the task."""
        if task in self._tasks:
            return
        self._tasks.add(task)
        for outcome in OUTCOMES:
            self.requests.labels(task, outcome)
            self.duration.labels(task, outcome)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(task, reason)
        self.first_chunk.labels(task)
        self.resubmits.labels(task)
