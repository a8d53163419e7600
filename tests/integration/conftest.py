from __future__ import annotations

import resource
from collections.abc import AsyncIterator, Iterator

import pytest

from rtai_transport import Redis, RedisSettings, close_redis, create_redis
from tests.support import procs
from tests.support.redis_server import RedisHandle


@pytest.fixture(autouse=True, scope="session")
def _raise_fd_limit() -> None:
    # 1,000+ sockets on each side of a test; children (the gateway) inherit the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


@pytest.fixture
def services(redis_server: RedisHandle, prefix: str) -> Iterator[list[procs.Service]]:
    """Processes a test starts; all stopped (by PID) at the end."""
    started: list[procs.Service] = []
    yield started
    for s in reversed(started):
        s.stop(timeout=15)


@pytest.fixture
def stack(redis_server: RedisHandle, prefix: str, services: list[procs.Service]) -> tuple[procs.Service, procs.Service]:
    """One worker (VADER) and one gateway on the session's Redis, under this test's prefix."""
    return procs.vader_stack(redis_server.url, prefix, services)


@pytest.fixture
async def redis(redis_server: RedisHandle) -> AsyncIterator[Redis]:
    """An asyncio client on the session's Redis, made by the services' own factory."""
    client = create_redis(RedisSettings(url=redis_server.url))
    yield client
    await close_redis(client)
