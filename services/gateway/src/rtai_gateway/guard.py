"""The edge defences one gateway process holds, built by the lifespan: authenticator, fair scheduler, per-user
connection counts and their metrics. The WebSocket endpoint reads it from the lifespan state as `guard`."""

from __future__ import annotations

from dataclasses import dataclass

from rtai_gateway.auth import Authenticator
from rtai_gateway.fairness import FairScheduler
from rtai_gateway.guard_metrics import GuardMetrics
from rtai_gateway.hub import Hub
from rtai_gateway.limits import UserConnections
from rtai_gateway.settings import GatewaySettings
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.guard")


@dataclass(eq=False)
class Guard:
    auth: Authenticator
    scheduler: FairScheduler
    users: UserConnections
    metrics: GuardMetrics
    send_high_water: int = 0

    def note_send_queue(self, queued: int) -> None:
        if queued > self.send_high_water:
            self.send_high_water = queued
            self.metrics.send_queue_high_water.set(queued)


def build_guard(settings: GatewaySettings, hub: Hub) -> Guard:
    auth = Authenticator(settings.auth)  # raises on a missing or malformed keys/JWKS file: fail fast at startup
    metrics = GuardMetrics(hub.metrics.registry)
    if not auth.enabled:
        log.warning(
            "auth.disabled",
            detail="RTAI_GW_AUTH__MODE=none: every connection is an anonymous user. Use api_key or jwt on any "
            "gateway reachable by others.",
        )
    else:
        log.info("auth.enabled", mode=auth.mode)
    return Guard(
        auth=auth,
        scheduler=FairScheduler(hub, settings.limits, metrics),
        users=UserConnections(settings.limits.max_connections_per_user),
        metrics=metrics,
    )
