"""What the gateway knows about the backend, refreshed in the background: live tasks, backlogs, Redis health.

Admission decisions read this snapshot instead of asking Redis per request, so refusing work costs nothing and keeps
working while Redis is slow. When the Redis node behind our address changes (its run_id), acknowledged writes may
have been lost in the failover: the hub is told to re-submit what is still in flight.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError

from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.settings import AdmissionSettings
from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, Redis
from rtai_transport.backlog import EMPTY, Backlog, read_backlogs
from rtai_transport.cancel import stop_if_cancelled
from rtai_transport.health import RedisHealth, read_health, round_trip
from rtai_transport.registry import TaskInfo, registered_tasks

log = get_logger("rtai_gateway.catalog")

STALE_AFTER_S = 2.0
"""Without a successful round trip for this long, Redis counts as unreachable (not ready; refuse new work)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    """Metric label: backlog, age, unavailable."""
    message: str
    retry_after_ms: int


class Catalog:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        settings: AdmissionSettings,
        metrics: GatewayMetrics,
        on_backend_change: Callable[[], Awaitable[None]],
    ) -> None:
        self.probe = redis
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._metrics = metrics
        self._on_backend_change = on_backend_change
        self.registered: dict[str, TaskInfo] = {}
        """Tasks ever registered, live or not: a registered task without live workers is `unavailable` (or queued for
        the workers that scale up from zero), not unknown."""
        self.workers: dict[str, int] = {}
        """Live workers per registered task (0 when all are gone)."""
        self.backlogs: dict[str, Backlog] = {}
        self._last_ok: float | None = None
        self._last_good: float | None = None
        """When a refresh last succeeded; unlike `_last_ok`, a failed submit does not clear it."""
        self._failing = True
        """The last refresh failed (or none ran yet)."""
        self.run_id: str | None = None
        self.refreshed = asyncio.Event()

    @property
    def redis_ok(self) -> bool:
        """Redis answered a round trip recently. A refresh that hangs (a frozen node) turns this false too."""
        return self._last_ok is not None and time.monotonic() - self._last_ok < STALE_AFTER_S

    @property
    def last_good_refresh(self) -> float | None:
        """When (time.monotonic) Redis last answered a refresh; None if it never did."""
        return self._last_good

    def unreachable_for_s(self) -> float | None:
        """How long Redis has gone without a good refresh: 0 while it answers, None if it never did."""
        if self._last_good is None:
            return None
        return 0.0 if self.redis_ok else time.monotonic() - self._last_good

    def accepting(self, task: str) -> TaskInfo | None:
        """The task's configuration if its requests are taken now: a live worker serves it, or it was registered once,
        its workers are scaled to zero and `queue_when_no_workers` is on, so its queue waits for the next to start."""
        info = self.registered.get(task)
        if info is None or (not self.workers.get(task) and not self._settings.queue_when_no_workers):
            return None
        return info

    def admission(self, task: str) -> Refusal | None:
        s = self._settings
        if not self.redis_ok:
            return Refusal("unavailable", "the queue backend is unreachable; retry shortly", s.retry_after_ms)
        b = self.backlogs.get(task, EMPTY)
        if b.length >= s.max_backlog:
            return Refusal("backlog", f"task {task!r} has {b.length} queued jobs", s.retry_after_ms)
        if b.oldest_age_s >= s.max_oldest_age_s:
            return Refusal("age", f"task {task!r} has waited {b.oldest_age_s:.1f}s for a worker", s.retry_after_ms)
        return None

    def mark_unreachable(self) -> None:
        """The submit path could not reach Redis, on a fresh connection too: refuse new work now rather than after
        STALE_AFTER_S (each request would wait for its own failed submit). The next good refresh clears it."""
        if not self._failing:
            log.warning("redis.unreachable")
        self._failing = True
        self._last_ok = None
        self._metrics.redis.set_down()

    def note_enqueued(self, task: str) -> None:
        """Count our own submissions between refreshes, so a burst cannot overshoot the backlog limit by much."""
        b = self.backlogs.get(task, EMPTY)
        self.backlogs[task] = Backlog(b.length + 1, b.pending, b.oldest_age_s)

    async def _read(self) -> tuple[RedisHealth, dict[str, tuple[TaskInfo, int]], dict[str, Backlog]]:
        await round_trip(self._redis, self._keys)
        health = await read_health(self._redis)
        registered = await registered_tasks(self._redis, self._keys)
        # Every registered task's queue, live workers or not: with none left its backlog is what the autoscaler must
        # see to start one (KEDA's activation from zero), and a reading kept from the last live worker would be stale.
        backlogs = await read_backlogs(self._redis, self._keys, registered)
        return health, registered, backlogs

    async def refresh(self) -> None:
        try:
            try:
                health, registered, backlogs = await self._read()
            except RedisConnectionError:
                # One dropped connection (a proxy's idle timeout, CLIENT KILL, a server `timeout`) is not an outage:
                # try once more on a fresh connection before refusing every request as `unavailable`.
                health, registered, backlogs = await self._read()
        except Exception as e:
            # One failed refresh is not an outage (a connection killed twice in a row, a slow moment): Redis counts
            # as unreachable once no refresh has succeeded for STALE_AFTER_S, or once a submit failed too
            # (mark_unreachable). Until then requests still go to Redis.
            if not self._failing:
                log.warning("redis.refresh_failed", error=type(e).__name__, detail=str(e)[:200])
            self._failing = True
            if not self.redis_ok:
                self._metrics.redis.set_down()
            return
        if self._failing:
            log.info("redis.reachable", role=health.role)
        self._failing = False
        self._last_ok = self._last_good = time.monotonic()
        for gone in self.registered.keys() - registered.keys():
            self._metrics.backlog.remove(gone)  # forgotten (`python -m rtai_worker forget`)
        self.registered = {t: info for t, (info, _) in registered.items()}
        self.workers = {t: n for t, (_, n) in registered.items()}
        self.backlogs = backlogs
        m = self._metrics
        m.redis.set_health(
            role=health.role,
            used_memory=health.used_memory_bytes,
            clients=health.connected_clients,
            lag=health.replication_lag_bytes,
        )
        for task, b in backlogs.items():
            m.init_task(task)
            m.backlog.set(
                task, length=b.waiting, pending=b.pending, oldest_age_s=b.oldest_age_s, workers=self.workers[task]
            )
        changed = self.run_id is not None and health.run_id != self.run_id
        self.run_id = health.run_id
        self.refreshed.set()
        if changed:
            log.warning("redis.node_changed", role=health.role)
            await self._on_backend_change()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catalog.refresh_failed")
            stop_if_cancelled()
            await asyncio.sleep(self._settings.refresh_interval_s * random.uniform(0.8, 1.2))
