"""A worker's Redis calls that may fail alone (past the client's retries) without costing the jobs they concern: the
cancel check before a batch and during a generation is best effort; a failed start is retried; a job handed back at
shutdown and run elsewhere counts as a re-run. Each on a real redis-server, with one call made to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rtai_protocol import Job, Reply, encode
from rtai_transport import WORKER_GROUP, Keys, Redis, RedisSettings
from rtai_worker.consumer import HANDED_BACK_IDLE_MS, Consumer, Delivery
from rtai_worker.models.options import ModelOptions
from rtai_worker.run import Worker
from rtai_worker.settings import WorkerSettings
from rtai_worker.task_server import TaskServer
from tests.support.fake_models import TokenModel
from tests.support.redis_server import RedisHandle
from tests.support.task_server_harness import make_job, serving, task_server

WORDS = " ".join(f"w{i}" for i in range(12))


@pytest.fixture(autouse=True)
def _slow_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTAI_TEST_TOKEN_MS", "100")  # a dozen words take ~1.2 s: several cancel polls


async def _replies(redis: Redis, keys: Keys) -> list[Reply]:
    return [Reply.model_validate_json(f[b"m"]) for _, f in await redis.xrange(keys.replies("g1"))]


async def _final(redis: Redis, keys: Keys, timeout: float = 10) -> Reply:
    async with asyncio.timeout(timeout):
        while not (finals := [r for r in await _replies(redis, keys) if r.kind != "chunk"]):
            await asyncio.sleep(0.05)
    (final,) = finals
    return final


def _fail_once(server: TaskServer, when: str) -> list[int]:
    """Make the server's cancel check raise once: on a batch's screen (`screen`) or on a running stream's poll
    (`poll`). Returns the list the failures are counted in."""
    consumer = server.consumer
    real = consumer.cancelled
    failed: list[int] = []

    async def cancelled(jobs: Sequence[Job]) -> set[str]:
        polling = bool(server.streams.tasks)
        if not failed and (polling if when == "poll" else not polling):
            failed.append(1)
            raise ConnectionError("Redis did not answer within the client's retries")
        return await real(jobs)

    consumer.cancelled = cancelled  # type: ignore[method-assign]
    return failed


@pytest.mark.parametrize("when", ["screen", "poll"])
async def test_a_failed_cancel_check_neither_drops_nor_abandons_the_job(redis: Redis, prefix: str, when: str) -> None:
    """Before: a failed check before the batch left the jobs just read unrun and unclaimed until the reclaim (5 s,
    charged a delivery); a failed poll threw a running generation away, to start again from nothing."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()))
    failed = _fail_once(server, when)
    await consumer.ensure_group()
    await redis.xadd(keys.jobs("generate"), {"m": encode(make_job(1, keys.replies("g1"), task="generate",
                                                                   input=WORDS, stream=True))})  # fmt: skip
    async with serving(server):
        final = await _final(redis, keys, timeout=4)  # well within the reclaim's 5 s
    assert failed, "the cancel check never failed: the test tested nothing"
    assert final.kind == "result", final
    chunks = [r.index for r in await _replies(redis, keys) if r.kind == "chunk"]
    assert chunks == list(range(12)), chunks  # one generation, not one cut off and a second from the start


async def test_a_failed_start_is_retried_not_the_end_of_the_task(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()))
    real = consumer.ensure_group
    tries: list[int] = []

    async def ensure_group() -> None:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("Redis did not answer within the client's retries")
        await real()

    consumer.ensure_group = ensure_group  # type: ignore[method-assign]
    await redis.xadd(keys.jobs("generate"), {"m": encode(make_job(1, keys.replies("g1"), task="generate",
                                                                   input="a b", stream=True))})  # fmt: skip
    async with serving(server):
        assert (await _final(redis, keys)).kind == "result"
    assert len(tries) == 2


async def test_a_job_handed_back_at_shutdown_and_run_elsewhere_counts_as_a_rerun(redis: Redis, prefix: str) -> None:
    """A stopping worker hands back the stream it cut off uncharged (its delivery count goes back to 0), so the worker
    that reclaims it sees a first delivery. It ran before: a re-run, its queue wait observed once, by the first."""
    keys = Keys(prefix)
    a = task_server(Consumer(redis, keys, "generate", "wa"), TokenModel(ModelOptions()))
    b = task_server(Consumer(redis, keys, "generate", "wb"), TokenModel(ModelOptions()))
    await a.consumer.ensure_group()
    await redis.xadd(keys.jobs("generate"), {"m": encode(make_job(1, keys.replies("g1"), task="generate",
                                                                   input=WORDS, stream=True))})  # fmt: skip
    async with serving(a):
        async with asyncio.timeout(5):
            while not any(r.kind == "chunk" for r in await _replies(redis, keys)):
                await asyncio.sleep(0.02)
        a.stopping.set()  # as the worker's shutdown does it, with no grace left: the stream is cut off
        unfinished = a.running.unfinished()
        a.streams.cancel()
        await a.consumer.hand_back(unfinished, HANDED_BACK_IDLE_MS)
    claimed = await b.consumer.reclaim(WorkerSettings().reclaim_idle_ms, count=1)
    assert [d.deliveries for d in claimed] == [1]
    await b.adopt(claimed)
    async with serving(b):
        assert (await _final(redis, keys)).kind == "result"

    def sample(server: TaskServer, name: str) -> float:
        return server.metrics.registry.get_sample_value(name, {"task": "generate"}) or 0.0

    assert sample(b, "rtai_worker_reruns_total") == 1
    assert sample(a, "rtai_worker_queue_wait_seconds_count") + sample(b, "rtai_worker_queue_wait_seconds_count") == 1


async def test_jobs_adopted_while_the_worker_stops_are_handed_back_at_once(redis: Redis, prefix: str) -> None:
    """The stop came while the reclaim ran; the read loop that would have handed them back is gone. Before, they
    waited in `running` (their claims kept fresh) for the whole drain."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()))
    await consumer.ensure_group()
    stream = keys.jobs("generate")
    await redis.xadd(stream, {"m": encode(make_job(1, keys.replies("g1"), task="generate", input="a b"))})
    await Consumer(redis, keys, "generate", "dead").read(1, block_ms=None)
    claimed = await consumer.reclaim(0, count=1)
    server.stopping.set()
    await server.adopt(claimed)
    assert not server.running
    (entry,) = await redis.xpending_range(stream, WORKER_GROUP, "-", "+", 10)
    assert entry["consumer"] == b"w1" and entry["time_since_delivered"] >= HANDED_BACK_IDLE_MS


async def test_a_failed_answer_to_screened_jobs_does_not_hold_back_the_live_ones(redis: Redis, prefix: str) -> None:
    """The screen's answers (here: a job past its deadline) fail to be written: the live job of the same batch still
    runs, and the expired one stays pending, unclaimed, for the reclaim to screen again."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()))
    real = consumer.finish
    failed: list[int] = []

    async def finish(done: Sequence[tuple[Delivery, Reply | None]]) -> None:
        if not failed and any(reply is not None and reply.code == "deadline_exceeded" for _, reply in done):
            failed.append(1)
            raise ConnectionError("Redis did not answer within the client's retries")
        await real(done)

    consumer.finish = finish  # type: ignore[method-assign]
    await consumer.ensure_group()
    expired = make_job(1, keys.replies("g1"), task="generate", input="a b", stream=True, deadline_ms=1)
    live = make_job(2, keys.replies("g1"), task="generate", input="c d", stream=True)
    for job in (expired, live):
        await redis.xadd(keys.jobs("generate"), {"m": encode(job)})
    async with serving(server):
        final = await _final(redis, keys, timeout=4)
    assert failed
    assert (final.request_id, final.kind) == ("r2", "result"), final
    (entry,) = await redis.xpending_range(keys.jobs("generate"), WORKER_GROUP, "-", "+", 10)
    assert entry["consumer"] == b"w1" and not server.running


async def test_a_worker_whose_first_group_creation_fails_serves_anyway(
    redis: Redis, redis_server: RedisHandle, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole worker: before, one error creating its consumer group at start ended the process (exit 0)."""
    real = Consumer.ensure_group
    tries: list[int] = []

    async def ensure_group(self: Consumer) -> None:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("Redis did not answer within the client's retries")
        await real(self)

    monkeypatch.setattr(Consumer, "ensure_group", ensure_group)
    keys = Keys(prefix)
    settings = WorkerSettings(
        tasks="generate=tests.support.fake_models:tokens",
        redis=RedisSettings(url=redis_server.url, prefix=prefix),
        http_port=0,
        http_host="127.0.0.1",
        worker_id="w1",
    )
    worker = Worker(settings)
    run = asyncio.create_task(worker.run())
    try:
        await redis.xadd(keys.jobs("generate"), {"m": encode(make_job(1, keys.replies("g1"), task="generate",
                                                                       input="a b", stream=True))})  # fmt: skip
        assert (await _final(redis, keys)).kind == "result"
        assert tries[0] == 1 and not run.done()
    finally:
        worker.stopping.set()
        await asyncio.wait_for(run, 15)
