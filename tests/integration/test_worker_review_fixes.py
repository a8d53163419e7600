"""The worker's task server on a real Redis, for defects a review found: a plugin's `stream` that raises when called,
a streaming model's plain jobs holding the read loop, the `busy` gauge dropping to 0 while calls still run, a
reclaimed stream overtaken by newer jobs, adopted jobs held through the whole drain, and drain-cut jobs charged a
delivery for a run they never finished."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from rtai_protocol import Job, Reply, encode
from rtai_transport import WORKER_GROUP, Keys, Redis, RedisSettings
from rtai_worker.consumer import Consumer, Delivery
from rtai_worker.engine import ModelError, ModelInfo, ModelInput
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.vader import VaderModel
from rtai_worker.run import Worker
from rtai_worker.settings import WorkerSettings
from rtai_worker.task_server import TaskServer
from tests.support.fake_models import TokenModel
from tests.support.redis_server import RedisHandle
from tests.support.task_server_harness import make_job, stop_serving, task_server


def _job(n: int, reply_to: str, **update: Any) -> Job:
    return make_job(n, reply_to, **{"task": "generate", "input": "a b c", **update})


async def _replies(redis: Redis, keys: Keys) -> list[Reply]:
    return [Reply.model_validate_json(f[b"m"]) for _, f in await redis.xrange(keys.replies("g1"))]


class _EagerModel:
    """A plugin whose `stream` raises when called (a plain function returning an iterator), not when advanced."""

    info = ModelInfo(name="eager", fingerprint="eager/1", max_input_chars=100, streaming=True)

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        return [None for _ in batch]

    def stream(self, item: ModelInput) -> Iterator[Any]:
        if item.text == "refused":
            raise ModelError("temperature too high for this model")
        if item.text == "broken":
            raise RuntimeError("the plugin failed")
        return iter(["a", "b"])

    def sort_key(self, item: ModelInput) -> int:
        return 1


async def test_a_stream_that_raises_when_called_is_answered_at_once(redis: Redis, prefix: str) -> None:
    """Before: `stream()` was called outside the step's error handling, so the job was left pending and unanswered
    until it was dead-lettered as poison (`failed`, after three reclaim periods)."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, _EagerModel())
    await consumer.ensure_group()
    serving = asyncio.create_task(server.serve())
    try:
        for n, text in enumerate(["refused", "broken", "fine"]):
            await redis.xadd(keys.jobs("generate"), {"m": encode(_job(n, keys.replies("g1"), stream=True, input=text))})
        async with asyncio.timeout(5):
            while len([r for r in await _replies(redis, keys) if r.kind != "chunk"]) < 3:
                await asyncio.sleep(0.02)
        finals = {r.request_id: (r.kind, r.code) for r in await _replies(redis, keys) if r.kind != "chunk"}
        assert finals == {"r0": ("error", "invalid_request"), "r1": ("error", "internal"), "r2": ("result", None)}
        assert (await redis.xpending(keys.jobs("generate"), WORKER_GROUP))["pending"] == 0
        assert server.running == {}
    finally:
        await stop_serving(server, serving)


class _GeneratingTokens(TokenModel):
    """TokenModel whose `predict` generates, as a real language model's does (SmolLM2: the stream run to its end),
    and whose stream returns the whole text."""

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        return [{"text": " ".join(super(_GeneratingTokens, self).stream(item))} for item in batch]

    def stream(self, item: ModelInput) -> Iterator[Any]:
        words = yield from super().stream(item)
        del words
        return {"text": item.text.upper()}


async def test_a_streaming_models_plain_job_holds_up_no_stream_and_stops_when_cancelled(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a plain (`stream: false`) job of a streaming model ran in one `predict` call in the read loop. New
    streams did not start (4 slots free) until it had generated to its end, and its cancel was ignored."""
    monkeypatch.setenv("RTAI_TEST_TOKEN_MS", "100")
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, _GeneratingTokens(ModelOptions()), WorkerSettings(max_streams=4))
    await consumer.ensure_group()
    serving = asyncio.create_task(server.serve())
    long = " ".join(f"w{i}" for i in range(40))  # 4 s of generation
    try:
        cancelled = _job(1, keys.replies("g1"), input=long)
        answered = _job(2, keys.replies("g1"), input="one two")
        for j in (cancelled, answered):
            await redis.xadd(keys.jobs("generate"), {"m": encode(j)})
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        await redis.set(keys.cancelled(cancelled.job_id), b"1")  # the gateway's cancel key (no listener here)
        await redis.xadd(keys.jobs("generate"), {"m": encode(_job(3, keys.replies("g1"), stream=True, input=long))})
        first_chunk = None
        async with asyncio.timeout(3):
            while first_chunk is None:
                if any(r.request_id == "r3" and r.kind == "chunk" for r in await _replies(redis, keys)):
                    first_chunk = time.monotonic() - t0
                await asyncio.sleep(0.02)
        assert first_chunk < 1.0, f"a new stream waited {first_chunk:.2f} s for a plain generation"
        async with asyncio.timeout(3):  # acked unanswered (the gateway sent `cancelled`), long before its 4 s
            while cancelled.job_id in {d.job.job_id for d in server.running.values()}:
                await asyncio.sleep(0.02)
        assert time.monotonic() - t0 < 2.0
        finals = {r.request_id: r for r in await _replies(redis, keys) if r.kind != "chunk"}
        assert "r1" not in finals, "a cancelled generation was answered"
        assert (finals["r2"].kind, finals["r2"].data) == ("result", {"text": "ONE TWO"})
        assert not [r for r in await _replies(redis, keys) if r.request_id in ("r1", "r2") and r.kind == "chunk"]
    finally:
        await stop_serving(server, serving)


async def test_busy_stays_up_while_any_model_call_runs(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the first stream to end set `rtai_worker_busy` to 0 while another still ran."""
    monkeypatch.setenv("RTAI_TEST_TOKEN_MS", "50")
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()), WorkerSettings(max_streams=2))

    def busy() -> float | None:
        return server.metrics.registry.get_sample_value("rtai_worker_busy")

    short = _job(1, keys.replies("g1"), stream=True, input="a b")
    long = _job(2, keys.replies("g1"), stream=True, input=" ".join(f"w{i}" for i in range(20)))
    await server.run([Delivery("0-1", short), Delivery("0-2", long)])
    async with asyncio.timeout(5):
        while "0-1" in server.running:
            await asyncio.sleep(0.01)
    assert "0-2" in server.running
    assert busy() == 1, "busy dropped to 0 while a stream still ran"
    async with asyncio.timeout(5):
        while server.running:
            await asyncio.sleep(0.01)
    assert busy() == 0


async def test_an_adopted_stream_is_not_overtaken_by_newer_jobs(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with every stream slot taken reclaims no stream (it would wait here while another worker could
    start it); one adopted while the read loop waits for a slot starts before the jobs read after it. Before: the
    reclaim took one anyway, and the read loop read and started a newer job first, which the adopted one then
    waited for."""
    monkeypatch.setenv("RTAI_TEST_TOKEN_MS", "100")
    keys = Keys(prefix)
    stream = keys.jobs("generate")
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()), WorkerSettings(max_streams=1))
    await consumer.ensure_group()
    words = " ".join(f"w{i}" for i in range(10))  # 1 s each
    await redis.xadd(stream, {"m": encode(_job(0, keys.replies("g1"), stream=True, input=words))})
    await redis.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=1)  # R, read by a worker that died
    serving = asyncio.create_task(server.serve())
    try:
        await redis.xadd(stream, {"m": encode(_job(1, keys.replies("g1"), stream=True, input=words))})  # A
        async with asyncio.timeout(5):
            while not server.running:
                await asyncio.sleep(0.01)
        await redis.xadd(stream, {"m": encode(_job(2, keys.replies("g1"), stream=True, input=words))})  # N
        assert server.reclaim_budget() == 0, "reclaims a stream with every slot taken"
        await server.adopt(await consumer.reclaim(min_idle_ms=0, count=1))  # as if taken just before A started
        first: dict[str, float] = {}
        t0 = time.monotonic()
        async with asyncio.timeout(8):
            while len(first) < 2:
                for r in await _replies(redis, keys):
                    if r.kind == "chunk" and r.request_id in ("r0", "r2"):
                        first.setdefault(r.request_id, time.monotonic() - t0)
                await asyncio.sleep(0.02)
        assert first["r0"] < first["r2"], f"the adopted stream started after a newer job: {first}"
    finally:
        await stop_serving(server, serving)


async def test_a_stopping_worker_hands_back_adopted_jobs_at_once_and_drain_cut_jobs_uncharged(
    redis: Redis, redis_server: RedisHandle, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At SIGTERM a job adopted but not started goes back at once, not after the drain; a stream the drain cut off
    goes back with the delivery it was charged for this run given back (before: each rolling update that cut a long
    generation brought it one step closer to the dead letters)."""
    monkeypatch.setenv("RTAI_TEST_TOKEN_MS", "100")
    keys = Keys(prefix)
    stream = keys.jobs("generate")
    settings = WorkerSettings(
        tasks="generate=tests.support.fake_models:tokens",
        redis=RedisSettings(url=redis_server.url, prefix=prefix),
        http_port=0,
        http_host="127.0.0.1",
        reclaim_idle_ms=600,
        shutdown_grace_s=3,
        max_streams=2,
        worker_id="w1",
    )
    worker = Worker(settings)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            while not worker.registered:
                await asyncio.sleep(0.05)
        long = " ".join(f"w{i}" for i in range(100))  # 10 s: cut off by the drain
        cut = (await redis.xadd(stream, {"m": encode(_job(1, keys.replies("g1"), stream=True, input=long))})).decode()
        server = worker.servers["generate"]
        async with asyncio.timeout(5):
            while cut not in server.running:
                await asyncio.sleep(0.05)
        async with redis.pipeline(transaction=True) as pipe:  # read by a worker that then died, before w1 can read it
            pipe.xadd(stream, {"m": encode(_job(2, keys.replies("g1"), stream=True))})
            pipe.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=1)
            added, _ = await pipe.execute()
        adopted = added.decode()
        async with asyncio.timeout(5):  # the worker's reclaim loop adopts it; it waits for the running stream to end
            while adopted not in server.running:
                await asyncio.sleep(0.05)
        t0 = time.monotonic()
        worker.stopping.set()  # SIGTERM
        async with asyncio.timeout(2):
            while True:
                (p,) = await redis.xpending_range(stream, WORKER_GROUP, min=adopted, max=adopted, count=1)
                if p["time_since_delivered"] >= 600_000:
                    break
                await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 1.5, "the adopted job was held through the drain"
        assert p["times_delivered"] == 1, "handed back charged for a run it never had"
        assert adopted not in server.running
        await asyncio.wait_for(run, 10)
        (p,) = await redis.xpending_range(stream, WORKER_GROUP, min=cut, max=cut, count=1)
        assert p["time_since_delivered"] >= 600_000
        assert p["times_delivered"] == 0, "the drain-cut stream keeps the delivery of the run it could not finish"
    finally:
        if not run.done():
            worker.stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run, 10)


def test_a_job_whose_model_call_hung_is_handed_back_charged(redis: Redis) -> None:
    """A hang is the job's as far as anyone knows: it keeps its delivery, so one that hangs every worker still reaches
    the dead letters; the other jobs cut off by the drain give theirs back."""
    server = task_server(Consumer(redis, Keys("t"), "generate", "w1"), TokenModel(ModelOptions()))
    hung, cut = Delivery("1-0", _job(1, "r"), deliveries=2), Delivery("2-0", _job(2, "r"), deliveries=3)
    server.running.add(hung)
    server.running.add(cut)
    server.running.hung.add(hung.entry_id)
    assert server.running.unfinished() == [("1-0", None), ("2-0", 2)]


def _sample(server: TaskServer, name: str, **labels: str) -> float:
    return server.metrics.registry.get_sample_value(name, {"task": server.task, **labels}) or 0.0


async def test_unreadable_entries_are_counted_whether_a_read_or_a_reclaim_finds_them(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "sentiment", "w1")
    server = task_server(consumer, VaderModel(ModelOptions()))
    await consumer.ensure_group()
    stream = keys.jobs("sentiment")
    await redis.xadd(stream, {"m": b"not json"})
    await redis.xadd(stream, {"m": encode(make_job(1, keys.replies("g1")))})
    await redis.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=2)  # read by a worker that then died
    reclaimed = await consumer.reclaim(min_idle_ms=0)
    assert [d.job.request_id for d in reclaimed] == ["r1"]
    assert _sample(server, "rtai_worker_jobs_total", outcome="unreadable") == 1, "the reclaim's reject was not counted"
    await redis.xadd(stream, {"m": b'{"type":"job"}'})
    assert await server._gather(8, 0) == []
    assert _sample(server, "rtai_worker_jobs_total", outcome="unreadable") == 2


async def test_a_rerun_counts_as_a_rerun_and_not_again_as_queue_wait(redis: Redis, prefix: str) -> None:
    """A re-run's time since its enqueue holds the runs before it: observed as queue wait, one job's wait would be
    counted again (and a reclaimed job's minute-long wait taken for a queue that long)."""
    keys = Keys(prefix)
    server = task_server(Consumer(redis, keys, "sentiment", "w1"), VaderModel(ModelOptions()))
    server.model.load()
    first = Delivery("0-1", make_job(1, keys.replies("g1")))
    rerun = Delivery("0-2", make_job(2, keys.replies("g1"), enqueued_ms=int(time.time() * 1000) - 60_000), deliveries=2)
    await server.run([first, rerun])
    await server.batches.written()
    assert _sample(server, "rtai_worker_jobs_total", outcome="ok") == 2
    assert _sample(server, "rtai_worker_reruns_total") == 1
    assert _sample(server, "rtai_worker_queue_wait_seconds_count") == 1
    assert _sample(server, "rtai_worker_queue_wait_seconds_bucket", le="10.0") == 1, "the re-run's wait was observed"


async def test_adopted_jobs_cut_off_while_handed_back_stay_running_for_the_shutdown_to_hand_back(
    redis: Redis, prefix: str
) -> None:
    """The stop's hand-back of adopted jobs cut off (the read loop ran past the drain's grace): the jobs go back into
    `running`, so the worker's shutdown hands them back, instead of waiting out `reclaim_idle_ms` unclaimed."""
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "generate", "w1")
    server = task_server(consumer, TokenModel(ModelOptions()))
    adopted = [Delivery(f"0-{n}", _job(n, keys.replies("g1")), deliveries=2) for n in (1, 2)]
    await server.adopt(adopted)
    writing = asyncio.Event()

    async def hand_back_hangs(entries: Any, idle_ms: int) -> None:
        writing.set()
        await asyncio.Event().wait()

    consumer.hand_back = hand_back_hangs  # type: ignore[method-assign]
    handing_back = asyncio.create_task(server._hand_back_adopted())
    await asyncio.wait_for(writing.wait(), 5)
    handing_back.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handing_back
    assert sorted(server.running) == ["0-1", "0-2"]
    assert server.running.unfinished() == [("0-1", 1), ("0-2", 1)]
