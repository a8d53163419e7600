"""A worker told to stop (SIGTERM) drains within one grace period and hands back what it could not finish, so another
worker takes it over at once instead of after the reclaim idle time. Real Redis, real processes."""

from __future__ import annotations

import asyncio
import signal
import time

import redis as redis_sync

from tests.support import procs
from tests.support.fake_models import LONG_TEXT, TOKENS_TASK
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

GRACE_S = 2.0
RECLAIM_IDLE_MS = 30_000
"""Far longer than the test waits: a job that was not handed back is only taken over after this."""


async def test_a_stopping_worker_drains_within_one_grace_period_and_hands_back_what_it_cut_off(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    tasks = f"sentiment=tests.support.fake_models:slow,{TOKENS_TASK}"
    a = start(
        services,
        procs.worker(
            env,
            prefix,
            tasks=tasks,
            RTAI_TEST_SLOW_MS="8000",  # one batch that outlasts the grace period
            RTAI_TEST_TOKEN_MS="300",  # 40 words: a stream that outlasts it too
            SHUTDOWN_GRACE_S=str(GRACE_S),
            RECLAIM_IDLE_MS=str(RECLAIM_IDLE_MS),
            MAX_STREAMS="1",
        ),
    )
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    batch = await c.infer("sentiment", "cut off mid-batch", deadline_ms=60_000)
    stream = await c.infer("generate", LONG_TEXT, stream=True, deadline_ms=60_000)
    await c.wait_for(lambda f: f["type"] == "chunk" and f["id"] == stream, 10)
    queued = await c.infer("generate", "waits for a stream slot", stream=True, deadline_ms=60_000)
    await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == queued, 10)

    t0 = time.monotonic()
    a.signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.proc.wait, 15) == 0  # type: ignore[union-attr]
    drained_s = time.monotonic() - t0
    # Before: the batch had the grace period, then the streams another one.
    assert drained_s < GRACE_S + 3, f"drained in {drained_s:.1f} s, grace {GRACE_S} s"

    r = redis_sync.Redis.from_url(redis_server.url)
    pending = r.xpending(f"{prefix}:v1:jobs:generate", "workers")["pending"]
    assert pending == 1, "a stopping worker must not read a job it could only hand back (only the cut-off stream)"

    start(
        services,
        procs.worker(
            env,
            prefix,
            tasks=tasks,
            RTAI_TEST_SLOW_MS="10",
            RTAI_TEST_TOKEN_MS="10",
            RECLAIM_IDLE_MS=str(RECLAIM_IDLE_MS),
        ),
    )
    for rid in (batch, stream, queued):  # before: the cut-off jobs waited for the reclaim idle time (30 s)
        final = await c.final(rid, timeout=10)
        assert final["type"] == "result", final
        assert len(c.finals(rid)) == 1
    chunks = [f["index"] for f in c.by_id[stream] if f["type"] == "chunk"]
    assert chunks == list(range(40)), "chunks missing or repeated across the hand-over"
    await c.close()


async def test_a_worker_whose_model_call_hangs_hands_its_jobs_back_and_exits(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A model call that does not return (here: for ten minutes) cannot be stopped, and the worker kept its jobs' claims
    fresh while it waited, so they never reached another worker and the task served nothing. `model_call_timeout_s`
    past its limit the worker hands them back, drains and exits with code 4 for its orchestrator to restart. A
    batch's limit is its requests' last deadline; a stream step's is its start."""
    env = procs.redis_env_for_url(redis_server.url)
    hang = {"RTAI_TEST_HANG_ON": "hang", "MODEL_CALL_TIMEOUT_S": "1", "RECLAIM_IDLE_MS": str(RECLAIM_IDLE_MS)}
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()

    batches = start(services, procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", **hang))
    g.wait_task("sentiment")
    batch = await c.infer("sentiment", "hang", deadline_ms=3_000)
    t0 = time.monotonic()
    assert await asyncio.to_thread(batches.proc.wait, 20) == 4  # type: ignore[union-attr]
    assert 3 <= time.monotonic() - t0 < 10, (
        "a batch is hung 1 s past its last deadline (3 s), not before, not much after"
    )
    assert (await c.final(batch, timeout=5))["code"] == "deadline_exceeded"  # the gateway's answer, on time
    log = batches.log_path.read_text()
    assert "model.call_hung" in log and "worker.handed_back" in log, log[-2000:]

    streams = start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **hang))
    g.wait_task("generate")
    stream = await c.infer("generate", "hang", stream=True, deadline_ms=60_000)
    t0 = time.monotonic()
    assert await asyncio.to_thread(streams.proc.wait, 20) == 4  # type: ignore[union-attr]
    assert time.monotonic() - t0 < 10, "the worker did not leave soon after its stream step hung"
    start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, RTAI_TEST_TOKEN_MS="10", RECLAIM_IDLE_MS="30000"))
    final = await c.final(stream, timeout=10)  # handed back: taken over at once, not after the reclaim idle time
    assert final["type"] == "result", final
    assert len(c.finals(stream)) == 1
    await c.close()
