"""Redis health as a service sees it: for readiness and for the rtai_redis_* gauges."""

from __future__ import annotations

from dataclasses import dataclass

from rtai_transport.client import Redis
from rtai_transport.keys import Keys


@dataclass(frozen=True, slots=True)
class RedisHealth:
    role: str
    used_memory_bytes: int
    connected_clients: int
    replication_lag_bytes: int
    run_id: str
    """Changes when the process behind the address changes (restart or failover): a hint that acknowledged
    writes may have been lost."""


async def round_trip(redis: Redis, keys: Keys) -> None:
    """Prove the data path: a write and a read on the master. Raises on any failure."""
    await redis.set(keys.readiness_probe, b"1", ex=60)
    if await redis.get(keys.readiness_probe) is None:
        raise RuntimeError("readiness probe key vanished")


async def read_health(redis: Redis) -> RedisHealth:
    info = await redis.info()
    role = str(info.get("role", "unknown"))
    lag = 0
    if role == "master":
        offset = int(info.get("master_repl_offset", 0))
        for name, value in info.items():
            if str(name).startswith("slave") and isinstance(value, dict) and "offset" in value:
                lag = max(lag, offset - int(value["offset"]))
    return RedisHealth(
        role=role,
        used_memory_bytes=int(info.get("used_memory", 0)),
        connected_clients=int(info.get("connected_clients", 0)),
        replication_lag_bytes=lag,
        run_id=str(info.get("run_id", "")),
    )
