"""The one factory for Redis clients: a plain URL or a Sentinel-discovered master, always with timeouts and retries.

redis-py's `Sentinel.master_for()` does not retry by default, so every command during a failover would raise; we give
every client an explicit Retry with jittered exponential backoff long enough to ride out a ~2-3 s promotion.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, TimeoutError

from rtai_transport.settings import RedisSettings

Redis = aioredis.Redis

# A replica that is being turned into a master, or a master that became a replica, answers READONLY/LOADING:
# both are transient during failover and worth a retry, like a dropped connection.
RETRY_ON = [ConnectionError, TimeoutError, BusyLoadingError, ReadOnlyError, OSError]


def text(value: bytes | str) -> str:
    """Redis replies are bytes (we never decode responses globally: payloads stay bytes); names and ids are text."""
    return value.decode() if isinstance(value, bytes) else value


class MasterSeekingConnection(SentinelManagedConnection):
    """A Sentinel-managed connection that asks the sentinels for the master on every (re)connect.

    redis-py asks only in `connect()`. A command whose connection dropped is retried by reconnecting inside
    `send_packed_command`, which goes to the address the connection had: after a failover, the demoted master. Each
    retry then got READONLY (or a refused socket) until the command gave up, with the new master up all along."""

    async def _connect(self) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()  # type: ignore[no-untyped-call]


class MasterSeekingSSLConnection(MasterSeekingConnection, SentinelManagedSSLConnection):
    pass


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel discovery with a pool that waits for a free connection instead of raising.

    redis-py's default pools raise MaxConnectionsError when every connection is busy: a burst of sockets (a reconnect
    storm after a gateway restart) then failed with 1011. Waiting up to the command timeout is the right back-pressure.
    """


def connection_name(service: str, instance: str, loop: str) -> str:
    """The name a connection carries (`rtai-gateway:<id>:framelog`): which service, replica and loop holds it.
    Redis takes only the printable ASCII characters but space in a name (`!` to `~`); any other becomes `_`, so a
    replica id with an accent or a space still connects."""
    name = f"{service}:{instance}:{loop}"
    return "".join(c if "!" <= c <= "~" else "_" for c in name)[:128]


def _retry(settings: RedisSettings, retries: int) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=settings.retry_backoff_cap_s),
        retries,
        supported_errors=tuple(RETRY_ON),
    )


def create_redis(
    settings: RedisSettings, *, block_timeout_s: float = 0.0, retries: int | None = None, name: str | None = None
) -> Redis:
    """A client for commands. `block_timeout_s` widens the socket timeout for clients that issue blocking reads;
    `retries=0` gives a probe client that fails fast (health checks must notice an outage, not ride it out).
    `name` (see `connection_name`) is set on every connection (CLIENT SETNAME): `CLIENT LIST` then tells which
    service, replica and loop holds each connection, which an operator needs to find a leak or to drop one service's
    connections."""
    password = settings.password.get_secret_value() if settings.password else None
    socket_timeout = settings.socket_timeout_s + block_timeout_s
    common: dict[str, object] = {
        "username": settings.username,
        "password": password,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.connect_timeout_s,
        "retry": _retry(settings, settings.retries if retries is None else retries),
        "retry_on_error": RETRY_ON,
        "health_check_interval": 10,
        "decode_responses": False,
    }
    if name is not None:
        common["client_name"] = name
    tls = settings.tls or settings.url.startswith("rediss://")
    if tls and settings.tls_ca_file:
        common["ssl_ca_certs"] = settings.tls_ca_file
    if settings.sentinels:
        sentinel_kwargs: dict[str, object] = {
            "socket_timeout": settings.connect_timeout_s,
            "socket_connect_timeout": settings.connect_timeout_s,
            # No retries inside discovery: redis-py's default (3 retries, backoff up to 10 s) per sentinel made one
            # lookup take ~22 s with every sentinel down, and a gateway stalled that long instead of refusing work.
            # Discovery already tries each sentinel in turn, and the command's own Retry (above) retries it all.
            "retry": Retry(NoBackoff(), 0),
        }
        if name is not None:
            sentinel_kwargs["client_name"] = name  # the sentinels' CLIENT LIST names the service too
        if settings.sentinel_password:
            sentinel_kwargs["password"] = settings.sentinel_password.get_secret_value()
        if tls:
            sentinel_kwargs["ssl"] = True
            if settings.tls_ca_file:
                sentinel_kwargs["ssl_ca_certs"] = settings.tls_ca_file
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            settings.sentinel_addresses(), sentinel_kwargs=sentinel_kwargs, ssl=tls, db=settings.db, **common
        )
        master: Redis = sentinel.master_for(
            settings.master,
            connection_pool_class=BlockingSentinelConnectionPool,
            connection_class=MasterSeekingSSLConnection if tls else MasterSeekingConnection,
            max_connections=settings.max_connections,
            timeout=socket_timeout,
        )
        return master
    url = settings.url.replace("redis://", "rediss://", 1) if settings.tls else settings.url
    pool = BlockingConnectionPool.from_url(
        url, max_connections=settings.max_connections, timeout=socket_timeout, **common
    )
    return aioredis.Redis(connection_pool=pool)


async def close_redis(client: Redis) -> None:
    """Close the client's connections, and under Sentinel its connections to the sentinels too. redis-py leaves
    those open; the garbage collector then closed their sockets at some later moment, after the event loop was gone."""
    await client.aclose()
    pool = client.connection_pool
    await pool.disconnect()
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()
