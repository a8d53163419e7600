"""The worker's task server in process, on a real Redis: its last look at cancel flags before it runs a batch, and a
read loop that outlives a failed reply and does not wait for replies to be written before it reads on, a streaming
worker that claims no more than it can start.

A job the client cancelled after the worker read it (the gateway could no longer XDEL it) is skipped by a model that
runs in a thread; a declared-cheap inline model runs it anyway, because the check would cost more than the job, and
the gateway drops that late result as a duplicate final (the last test here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from rtai_protocol import Reply, encode
from rtai_transport import Keys, Redis
from rtai_worker.consumer import Consumer, Delivery
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.vader import VaderModel
from rtai_worker.settings import WorkerSettings
from tests.support import procs
from tests.support.fake_models import TokenModel
from tests.support.redis_server import RedisHandle
from tests.support.requests_state import job_of, reply_as_worker
from tests.support.task_server_harness import make_job, stop_serving, task_server
from tests.support.ws_client import Conn


@pytest.mark.parametrize("inline", [False, True])
async def test_cancelled_after_read(redis: Redis, prefix: str, inline: bool) -> None:
    keys = Keys(prefix)
    model = VaderModel(ModelOptions())
    model._info = dataclasses.replace(model.info, inline=inline)
    consumer = Consumer(redis, keys, "sentiment", "w1")
    server = task_server(consumer, model)
    jobs = [make_job(n, keys.replies("g1")) for n in range(3)]
    await redis.set(keys.cancelled(jobs[1].job_id), b"1")

    live, done = await server._screen([Delivery(f"0-{n + 1}", j) for n, j in enumerate(jobs)], int(time.time() * 1000))

    if inline:
        assert [d.job.request_id for d in live] == ["r0", "r1", "r2"]
        assert done == []
    else:
        assert [d.job.request_id for d in live] == ["r0", "r2"]
        assert [(d.job.request_id, reply) for d, reply in done] == [("r1", None)]


async def test_late_result_after_cancel_is_dropped(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], redis: Redis
) -> None:
    """What an inline worker does with a job cancelled after its read: the result reaches the gateway after the
    client already got `cancelled`. The client sees one final frame, and the connection goes on serving."""
    env = procs.redis_env_for_url(redis_server.url)
    w = procs.worker(env, prefix).start()
    services.append(w)
    g = procs.gateway(env, prefix).start()
    services.append(g)
    c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
    w.signal(signal.SIGSTOP)  # the job waits (queued, or read by the stopped worker) until after the cancel
    try:
        rid = await c.infer("sentiment", "cancelled, then answered anyway")
        await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == rid)
        await c.send({"type": "cancel", "id": rid})
        assert (await c.final(rid))["code"] == "cancelled"
    finally:
        w.signal(signal.SIGCONT)
    await reply_as_worker(redis, await job_of(redis, Keys(prefix), rid), {"label": "positive"})
    # A request sent after the late reply is answered after the gateway has read it (one reply stream, in order).
    assert (await c.call("sentiment", "still serving"))["type"] == "result"
    await asyncio.sleep(0.2)
    assert [f["type"] for f in c.by_id[rid]] == ["accepted", "error"], c.by_id[rid]
    await c.close()


async def test_serve_survives_a_failed_reply(redis: Redis, prefix: str) -> None:
    """Redis failing while a batch is answered (MULTI with the reply and the XACK) leaves the batch pending for the
    reclaimer; the read loop goes on serving instead of ending the worker."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "sentiment", "w1")
    server = task_server(consumer, VaderModel(ModelOptions()))
    server.model.load()
    real_finish = consumer.finish
    calls = 0

    async def finish_failing_once(done: Any) -> None:
        nonlocal calls
        if done:  # not the screen's call for the jobs it answers itself (none here): the batch's replies
            calls += 1
            if calls == 1:
                raise RedisConnectionError("connection lost while replying")
        await real_finish(done)

    consumer.finish = finish_failing_once  # type: ignore[method-assign]
    await consumer.ensure_group()
    serving = asyncio.create_task(server.serve())
    try:
        first, second = make_job(1, keys.replies("g1")), make_job(2, keys.replies("g1"))
        await redis.xadd(keys.jobs("sentiment"), {"m": encode(first)})
        while calls < 1:
            await asyncio.sleep(0.01)
        await redis.xadd(keys.jobs("sentiment"), {"m": encode(second)})
        replies: list[Any] = []
        for _ in range(300):
            replies = await redis.xrange(keys.replies("g1"))
            if replies:
                break
            await asyncio.sleep(0.01)
        assert not serving.done(), "the read loop ended"
        assert [Reply.model_validate_json(f[b"m"]).request_id for _, f in replies] == ["r2"]
        pending = await redis.xpending(keys.jobs("sentiment"), "workers")
        assert pending["pending"] == 1, "the unanswered batch must stay pending, for the reclaimer"
        ok = {"task": "sentiment", "outcome": "ok"}
        async with asyncio.timeout(2):  # counted once its write is done, a moment after Redis has the reply
            while not server.metrics.registry.get_sample_value("rtai_worker_jobs_total", ok):
                await asyncio.sleep(0.01)
        # r1 is counted when its re-run is answered: counted now too, it would be counted twice.
        assert server.metrics.registry.get_sample_value("rtai_worker_jobs_total", ok) == 1
    finally:
        await stop_serving(server, serving)


async def test_replies_are_written_while_the_next_batch_is_read(redis: Redis, prefix: str) -> None:
    """The read loop does not wait for a batch's replies to be written before it reads the next batch. Until its
    reply is written a job stays in `running` (its claim kept fresh, handed back at shutdown), and a stopping loop
    returns only once every reply is written."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "sentiment", "w1")
    server = task_server(consumer, VaderModel(ModelOptions()))
    real_finish = consumer.finish
    gate = asyncio.Event()
    writing: list[list[str]] = []

    async def held_finish(done: Any) -> None:
        if not done:  # nothing screened out of the batch
            return
        writing.append([d.job.request_id for d, _ in done])
        await gate.wait()
        await real_finish(done)

    consumer.finish = held_finish  # type: ignore[method-assign]
    await consumer.ensure_group()
    serving = asyncio.create_task(server.serve())
    try:
        first = await redis.xadd(keys.jobs("sentiment"), {"m": encode(make_job(1, keys.replies("g1")))})
        async with asyncio.timeout(5):
            while writing != [["r1"]]:
                await asyncio.sleep(0.01)
        assert list(server.running) == [first.decode()], "a job whose reply is unwritten is still this worker's"
        second = await redis.xadd(keys.jobs("sentiment"), {"m": encode(make_job(2, keys.replies("g1")))})
        async with asyncio.timeout(5):
            while writing != [["r1"], ["r2"]]:
                await asyncio.sleep(0.01)
        assert set(server.running) == {first.decode(), second.decode()}
        server.stopping.set()
        await asyncio.sleep(0.6)  # longer than one blocking read: the loop would have ended by now
        assert not serving.done(), "the loop must wait for the replies it has not written"
        assert await redis.xlen(keys.replies("g1")) == 0
        gate.set()
        await asyncio.wait_for(serving, 5)
        replies = await redis.xrange(keys.replies("g1"))
        assert [Reply.model_validate_json(f[b"m"]).request_id for _, f in replies] == ["r1", "r2"]
        assert (await redis.xpending(keys.jobs("sentiment"), "workers"))["pending"] == 0
        assert server.running == {}
    finally:
        gate.set()
        await stop_serving(server, serving)


async def test_a_streaming_worker_reads_only_what_it_can_start(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With its stream slots full, a worker leaves further generations in the queue (for other replicas) instead of
    claiming them to wait here; a job whose deadline passed while it waited for a slot is answered, not run."""
    monkeypatch.setenv("RTAI_TEST_TOKEN_MS", "100")
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    settings = WorkerSettings(max_streams=2, max_batch_size=32)
    server = task_server(consumer, TokenModel(ModelOptions()), settings)
    await consumer.ensure_group()
    jobs = [make_job(n, keys.replies("g1"), task="generate", stream=True, input="a b c d e f") for n in range(5)]
    # The third job's deadline passes while it waits for a slot (the first two take ~600 ms).
    jobs[2] = jobs[2].model_copy(update={"deadline_ms": int(time.time() * 1000) + 400})
    for j in jobs:
        await redis.xadd(keys.jobs("generate"), {"m": encode(j)})
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.sleep(0.3)  # two generations running (6 words x 100 ms each)
        pending = await redis.xpending(keys.jobs("generate"), "workers")
        assert pending["pending"] == 2, pending
        groups = await redis.xinfo_groups(keys.jobs("generate"))
        assert groups[0]["lag"] == 3, "the other three jobs must stay unread in the queue"
        deadline = time.monotonic() + 10
        while True:
            replies = [Reply.model_validate_json(f[b"m"]) for _, f in await redis.xrange(keys.replies("g1"))]
            late = [r for r in replies if r.request_id == "r2"]
            if any(r.kind in ("result", "error") for r in late):
                break
            assert time.monotonic() < deadline, "the late job was never answered"
            await asyncio.sleep(0.05)
        assert [(r.kind, r.code) for r in late] == [("error", "deadline_exceeded")], late
    finally:
        await stop_serving(server, serving)


async def test_a_stream_that_waited_past_its_deadline_is_answered_not_run(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()))
    job = make_job(1, keys.replies("g1")).model_copy(
        update={"task": "generate", "stream": True, "deadline_ms": int(time.time() * 1000) - 1}
    )
    await server.streams.run(Delivery("0-1", job))
    [(_, fields)] = await redis.xrange(keys.replies("g1"))
    reply = Reply.model_validate_json(fields[b"m"])
    assert (reply.kind, reply.code) == ("error", "deadline_exceeded")


async def test_a_cancel_noted_while_a_batch_ran_is_forgotten_with_the_batch(redis: Redis, prefix: str) -> None:
    """The cancel listener notes the ids of jobs being run; once a batch is answered its ids go, so the set holds
    only jobs still running, however long the worker lives."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "sentiment", "w1")
    await consumer.ensure_group()
    server = task_server(consumer, VaderModel(ModelOptions()))
    server.model.load()
    batch = [Delivery(f"0-{n + 1}", make_job(n, keys.replies("g1"))) for n in range(3)]
    server.running.cancelled.update(d.job.job_id for d in batch)  # as the listener does for jobs in `running`
    await server.run(batch)
    await server.batches.written()
    assert server.running == {}
    assert server.running.cancelled == set()
    assert await redis.xlen(keys.replies("g1")) == 3
