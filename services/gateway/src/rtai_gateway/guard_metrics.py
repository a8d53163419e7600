"""Metrics of the edge defences (auth, origin, limits, fairness), on the gateway's registry.

No identity or token is ever a label value: labels are fixed reason strings.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.auth_failures = Counter(
            "rtai_gateway_auth_failures", "Connections refused for their credentials, by reason", ["reason"], registry=r
        )
        self.policy_closes = Counter(
            "rtai_gateway_policy_closes",
            "Sockets refused or closed by a limit or policy (host, origin, gateway_full, user_connections, "
            "unauthenticated, auth_timeout, first_message_timeout, idle)",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "rtai_gateway_rate_limited_frames", "Client frames refused by the per-connection rate limit", registry=r
        )
        self.user_queued = Gauge(
            "rtai_gateway_user_queue_requests",
            "Requests waiting in per-user fairness queues at the gateway",
            registry=r,
        )
        self.user_queue_high_water = Gauge(
            "rtai_gateway_user_queue_high_water_requests",
            "Most requests ever waiting in one user's fairness queue (bounded by limits.max_queued_per_user)",
            registry=r,
        )
        self.send_queue_high_water = Gauge(
            "rtai_gateway_send_queue_high_water_frames",
            "Most frames ever queued for one socket (bounded by limits.send_queue_frames)",
            registry=r,
        )
        self.internal_errors = Counter(
            "rtai_gateway_internal_errors", "Client frames answered `internal` because handling them raised", registry=r
        )
