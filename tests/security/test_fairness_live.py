"""Fairness shown by order, not timing: with a heavy user's backlog queued, a light user's request is run before the
heavy user's later requests. The worker records the order in which it runs inputs; it is paused (SIGSTOP) while
both users submit, so the order depends only on admission, never on how fast anything ran.

The same scenario with an effectively unlimited per-user cap is the control: the light request then runs last."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.security.conftest import JWT_ENV, token
from tests.support import procs
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

pytestmark = pytest.mark.integration

HEAVY = 20


async def run_order(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], tmp_path: Path, cap: int
) -> list[str]:
    env = procs.redis_env_for_url(redis_server.url)
    w = start(
        services,
        procs.worker(
            env,
            prefix,
            tasks="sentiment=tests.support.fake_models:counting",
            RTAI_TEST_COUNT_DIR=str(tmp_path),
            MAX_BATCH_SIZE="1",
        ),
    )
    g = start(services, procs.gateway(env, prefix, **JWT_ENV, LIMITS__MAX_INFLIGHT_PER_USER=str(cap)))

    async def user(sub: str) -> Conn:
        return await Conn(ws_url(g)).open(subprotocols=["rtai.v1", f"bearer.{token(sub)}"])

    heavy_a, heavy_b, light = await user("heavy"), await user("heavy"), await user("light")
    w.signal(signal.SIGSTOP)
    try:
        for i in range(HEAVY):  # one user, two sockets: the cap is per user, not per connection
            await (heavy_a if i % 2 == 0 else heavy_b).infer("sentiment", f"heavy{i:02d} good", rid=f"h{i}")
        for c in (heavy_a, heavy_b):  # a round trip on each socket: all of heavy's frames have been handled
            await c.send({"type": "cancel", "id": "nothing"})
            await c.wait_for(lambda f: f.get("id") == "nothing")
        await light.infer("sentiment", "light00 good", rid="l0")
        await light.wait_for(lambda f: f["type"] == "accepted")
    finally:
        w.signal(signal.SIGCONT)
    assert (await light.final("l0", timeout=20))["type"] == "result"
    for i in range(HEAVY):
        assert (await (heavy_a if i % 2 == 0 else heavy_b).final(f"h{i}", timeout=20))["type"] == "result"
    await asyncio.gather(heavy_a.close(), heavy_b.close(), light.close())
    return run_log(tmp_path)


def run_log(directory: Path) -> list[str]:
    """Inputs in the order the (single) worker ran them."""
    lines = [ln.split()[0] for f in directory.glob("*.txt") for ln in f.read_text().splitlines()]
    return [ln for ln in lines if ln.startswith(("heavy", "light"))]


def check_heavy(order: list[str]) -> None:
    heavy = [x for x in order if x.startswith("heavy")]
    assert sorted(heavy) == [f"heavy{i:02d}" for i in range(HEAVY)], "each heavy request ran exactly once"
    # Two sockets of one user reach the gateway concurrently; each socket's own requests keep their order.
    for parity in (0, 1):
        mine = [x for x in heavy if int(x[5:]) % 2 == parity]
        assert mine == sorted(mine)


async def test_light_user_is_served_before_the_heavy_users_backlog(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service], tmp_path: Path
) -> None:
    order = await run_order(redis_server, prefix, sec_services, tmp_path, cap=2)
    # The heavy user's cap (2) were in the stream first; the light request comes right after them, ahead of the
    # 18 heavy requests still waiting at the gateway.
    assert order.index("light00") == 2, order
    check_heavy(order)


async def test_control_without_a_per_user_cap_the_light_user_waits_behind_everything(
    redis_server: RedisHandle, prefix: str, sec_services: list[procs.Service], tmp_path: Path
) -> None:
    order = await run_order(redis_server, prefix, sec_services, tmp_path, cap=1000)
    assert order.index("light00") == HEAVY, order
    check_heavy(order)
