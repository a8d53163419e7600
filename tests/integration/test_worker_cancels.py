"""The worker's cancel listener survives Redis outages without using up its client's connection pool (a PubSub
keeps a pool connection until it is closed). A redis-server of the test's own is killed and started again on the
same port, more times than the pool has spare connections."""

from __future__ import annotations

import asyncio
import contextlib

from rtai_transport import RedisSettings, close_redis, create_redis
from rtai_worker.cancels import listen_cancels
from tests.support.ports import free_port
from tests.support.redis_server import RedisProcess

CHANNEL = "rtai-test:cancel"
POOL = 4  # the smallest pool RedisSettings allows: the listener's connection and three more


async def _published_until_heard(server: RedisProcess, heard: list[str], job_id: str, timeout: float = 10) -> None:
    """Publish `job_id` until the listener hears it (it may still be resubscribing)."""
    deadline = asyncio.get_running_loop().time() + timeout
    publisher = server.client()
    try:
        while job_id not in heard:
            assert asyncio.get_running_loop().time() < deadline, f"the listener never heard {job_id}"
            publisher.publish(CHANNEL, job_id)
            await asyncio.sleep(0.1)
    finally:
        publisher.close()


async def test_the_cancel_listener_gives_its_connection_back_after_each_outage() -> None:
    server = RedisProcess(port=free_port()).start()
    settings = RedisSettings(
        url=server.url, max_connections=POOL, retries=0, socket_timeout_s=1.0, connect_timeout_s=0.5
    )
    client = create_redis(settings)
    heard: list[str] = []
    listener = asyncio.create_task(listen_cancels(client, CHANNEL, heard.append, retry_s=0.2))
    try:
        await _published_until_heard(server, heard, "before")
        for outage in range(POOL):
            server.kill()
            await asyncio.sleep(1.0)  # longer than the client's retries: the subscription fails, and is made anew
            server.start()
            await _published_until_heard(server, heard, f"after-{outage}")
        # Every connection but the listener's is free: a command gets one at once.
        assert await asyncio.wait_for(client.ping(), 2.0)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await close_redis(client)
        server.stop()
