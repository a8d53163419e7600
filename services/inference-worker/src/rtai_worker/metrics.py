"""The worker's Prometheus metrics (docs/metrics.md lists them with their meaning)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from rtai_telemetry.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, BacklogGauges, RedisGauges

JOB_OUTCOMES = ("ok", "error", "expired", "cancelled", "dead_lettered", "unreadable")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_wait = Histogram(
            "rtai_worker_queue_wait_seconds",
            "Job enqueued -> picked up by a worker",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "rtai_worker_inference_seconds",
            "One model call on one (micro-)batch",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "rtai_worker_batch_size", "Jobs per model call", ["task"], buckets=BATCH_BUCKETS, registry=r
        )
        self.jobs = Counter(
            "rtai_worker_jobs",
            "Jobs finished, by outcome (ok, error, expired, cancelled, dead_lettered, unreadable)",
            ["task", "outcome"],
            registry=r,
        )
        self.reclaimed = Counter(
            "rtai_worker_reclaimed", "Jobs taken over from a silent consumer", ["task"], registry=r
        )
        self.claims_lost = Counter(
            "rtai_worker_claims_lost",
            "Running jobs another worker reclaimed while this one was paused (it runs them now)",
            ["task"],
            registry=r,
        )
        self.reruns = Counter(
            "rtai_worker_reruns", "Jobs run more than once (redelivered or re-submitted)", ["task"], registry=r
        )
        self.dead_lettered = Counter(
            "rtai_worker_dead_lettered", "Jobs moved to the dead-letter stream", ["task"], registry=r
        )
        self.busy = Gauge("rtai_worker_busy", "1 while a model call (a batch or a stream) is running", registry=r)
        self._calls = 0
        """Model calls in progress (batches and streams, every task): `busy` is 1 while any runs, not only until
        the first of them ends."""
        self.backlog = BacklogGauges(r)
        self.redis = RedisGauges(r)

    @contextmanager
    def model_call(self) -> Iterator[None]:
        """Counts a batch or a stream while it runs; `busy` goes back to 0 when the last one in progress ends."""
        self._calls += 1
        self.busy.set(1)
        try:
            yield
        finally:
            self._calls -= 1
            if self._calls == 0:
                self.busy.set(0)

    def init_task(self, task: str) -> None:
        """Create a task's series at zero: a counter first seen at 1 shows no rate() or increase()."""
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(task, outcome)
        for metric in (
            self.reclaimed,
            self.claims_lost,
            self.reruns,
            self.dead_lettered,
            self.queue_wait,
            self.inference,
            self.batch_size,
        ):
            metric.labels(task)
