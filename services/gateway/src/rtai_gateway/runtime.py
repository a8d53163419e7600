"""Everything the lifespan owns, in one typed object handed to handlers through the lifespan state."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtai_gateway.catalog import Catalog
from rtai_gateway.connection import Connection
from rtai_gateway.hub import Hub
from rtai_gateway.loops import ReaderPulse
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.settings import GatewaySettings
from rtai_transport import Redis


@dataclass(eq=False)
class Runtime:
    settings: GatewaySettings
    redis: Redis
    metrics: GatewayMetrics
    hub: Hub
    catalog: Catalog
    connections: set[Connection] = field(default_factory=set)
    draining: bool = False
    reader_ready: bool = False
    reader: ReaderPulse = field(default_factory=ReaderPulse)
