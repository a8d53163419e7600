"""Metric building blocks shared by the services: bucket layouts and the backlog / Redis gauges every replica exports.

Every metric lives on an explicit registry passed in, never the global one, so tests can build many apps in one
process without "Duplicated timeseries". Label values are bounded (task names, outcomes, roles), never ids.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
REDIS_ROLES = ("master", "slave", "unknown")

__all__ = ["BATCH_BUCKETS", "CONTENT_TYPE_LATEST", "LATENCY_BUCKETS", "BacklogGauges", "RedisGauges", "render"]


class BacklogGauges:
    """rtai_queue_* gauges. Every replica reads the same Redis numbers: aggregate with `max by (task)`, never sum."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.length = Gauge(
            "rtai_queue_length",
            "Jobs waiting in the task's stream, not yet delivered to a worker",
            ["task"],
            registry=registry,
        )
        self.pending = Gauge(
            "rtai_queue_pending", "Jobs delivered to a worker and not yet acked", ["task"], registry=registry
        )
        self.oldest_age = Gauge(
            "rtai_queue_oldest_age_seconds",
            "Age of the oldest job still in the task's stream",
            ["task"],
            registry=registry,
        )
        self.workers = Gauge("rtai_queue_workers", "Live workers registered for the task", ["task"], registry=registry)

    def set(self, task: str, *, length: int, pending: int, oldest_age_s: float, workers: int | None = None) -> None:
        self.length.labels(task).set(length)
        self.pending.labels(task).set(pending)
        self.oldest_age.labels(task).set(oldest_age_s)
        if workers is not None:
            self.workers.labels(task).set(workers)

    def remove(self, task: str) -> None:
        """Drop a task's series (a task removed from the registry): a reading frozen at its last value would keep an
        autoscaler or an alert acting on a task that is gone."""
        for gauge in (self.length, self.pending, self.oldest_age, self.workers):
            gauge.remove(task)  # a no-op for a series never set


class RedisGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge("rtai_redis_up", "1 when the last Redis round trip succeeded", registry=registry)
        self.role = Gauge(
            "rtai_redis_role", "1 for the role of the Redis node this process talks to", ["role"], registry=registry
        )
        self.memory = Gauge("rtai_redis_used_memory_bytes", "Redis used_memory", registry=registry)
        self.clients = Gauge("rtai_redis_connected_clients", "Redis connected_clients", registry=registry)
        self.lag = Gauge(
            "rtai_redis_replication_lag_bytes", "Largest replica offset lag seen by the master", registry=registry
        )

    def set_down(self) -> None:
        self.up.set(0)

    def set_health(self, *, role: str, used_memory: int, clients: int, lag: int) -> None:
        self.up.set(1)
        known = role if role in REDIS_ROLES else "unknown"
        for r in REDIS_ROLES:
            self.role.labels(r).set(1 if r == known else 0)
        self.memory.set(used_memory)
        self.clients.set(clients)
        self.lag.set(lag)


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
