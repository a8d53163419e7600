"""What a worker does with jobs it cannot run or answer normally, on a real Redis: entries it cannot read leave the
queue for the dead letters (with the reason, the client answered where the entry says where), an output that cannot
be encoded or is too large fails alone instead of its whole batch, and a streaming model that raises, a model's own
timeout and a wrong number of outputs are answered at once."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from rtai_client import dlq
from rtai_protocol import ErrorCode, Job, Reply, encode
from rtai_transport import WORKER_GROUP, Keys, Redis
from rtai_worker.consumer import Consumer, Delivery
from rtai_worker.engine import DeadlinePassed, ModelInput
from rtai_worker.metrics import WorkerMetrics
from rtai_worker.model_threads import ModelCallHung
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.vader import VaderModel
from rtai_worker.settings import WorkerSettings
from rtai_worker.task_server import TaskServer
from tests.support.fake_models import TokenModel
from tests.support.redis_server import RedisHandle


def _no_hang(e: ModelCallHung) -> None:
    pytest.fail(f"no model call should hang here: {e}")  # a BaseException: the worker's error handling lets it by


def _job(rid: str, keys: Keys, text: str = "a fine day", task: str = "sentiment") -> Job:
    now = int(time.time() * 1000)
    return Job(
        job_id=uuid.uuid4().hex,
        request_id=rid,
        owner="o",
        session="s",
        task=task,
        input=text,
        deadline_ms=now + 30_000,
        enqueued_ms=now,
        reply_to=keys.replies("g1"),
    )


async def _replies(redis: Redis, keys: Keys, skip: int = 0) -> dict[str, Reply]:
    """The replies in gateway g1's stream after its first `skip` entries, by request id."""
    entries = (await redis.xrange(keys.replies("g1")))[skip:]
    return {r.request_id: r for r in (Reply.model_validate_json(f[b"m"]) for _, f in entries)}


def _server(redis: Redis, keys: Keys, model: Any, task: str = "sentiment", **settings: Any) -> TaskServer:
    consumer = Consumer(redis, keys, task, "w1", max_reply_bytes=settings.pop("max_reply_bytes", 1 << 20))
    return TaskServer(task, model, consumer, WorkerSettings(**settings), WorkerMetrics(CollectorRegistry()), _no_hang)


async def test_entries_a_worker_cannot_read_go_to_the_dead_letters_and_their_clients_are_answered(
    redis: Redis, redis_server: RedisHandle, prefix: str
) -> None:
    keys = Keys(prefix)
    server = _server(redis, keys, VaderModel(ModelOptions()))
    await server.consumer.ensure_group()
    newer = orjson.loads(encode(_job("from-a-newer-gateway", keys))) | {"v": 99}
    for raw in (b"not json", b'{"v":[1],"type":"job"}', orjson.dumps(newer)):
        await redis.xadd(keys.jobs("sentiment"), {"m": raw})
    await redis.xadd(keys.jobs("sentiment"), {"m": encode(_job("good", keys))})

    got, bad = await server.consumer.read(32, block_ms=None)
    assert [d.job.request_id for d in got] == ["good"], "a bad entry must not stop the jobs read with it"
    await server.consumer.reject(bad)

    letters = await dlq.list_entries(redis_server.url, keys.root.rsplit(":", 1)[0], "sentiment")
    assert len(letters) == 3 and all(d.reason for d in letters), letters
    answered = await _replies(redis, keys)
    assert answered["from-a-newer-gateway"].code == "failed"
    assert (await redis.xpending(keys.jobs("sentiment"), WORKER_GROUP))["pending"] == 1  # only the good job
    with pytest.raises(dlq.DlqError, match="cannot be replayed"):
        await dlq.replay(redis_server.url, keys.root.rsplit(":", 1)[0], "sentiment", [letters[0].entry_id])


async def test_a_bad_entry_does_not_stop_the_reclaim_of_the_jobs_claimed_with_it(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    consumer = Consumer(redis, keys, "sentiment", "w1")
    await consumer.ensure_group()
    await redis.xadd(keys.jobs("sentiment"), {"m": b'{"v":[1],"type":"job"}'})
    await redis.xadd(keys.jobs("sentiment"), {"m": encode(_job("good", keys))})
    await Consumer(redis, keys, "sentiment", "dead-worker").read(32, block_ms=None)  # read, then the worker died
    claimed = await consumer.reclaim(0)
    assert [d.job.request_id for d in claimed] == ["good"]
    assert await redis.xlen(keys.dead_letters("sentiment")) == 1


class OddOutputs(VaderModel):
    """VADER, except for three inputs: one whose output JSON cannot hold, one far too large, and one the model
    stopped at its deadline (as a generator does)."""

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        odd = {"unencodable": {"value": object()}, "huge": "x" * 200_000, "late": DeadlinePassed("stopped")}
        return [odd.get(i.text, o) for i, o in zip(batch, super().predict(batch), strict=True)]


async def test_an_output_that_cannot_be_sent_fails_alone_not_its_batch(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    model = OddOutputs(ModelOptions())
    model.load()
    server = _server(redis, keys, model, max_reply_bytes=100_000)
    await server.consumer.ensure_group()
    for rid, text in (("ok", "a fine day"), ("unencodable", "unencodable"), ("huge", "huge"), ("late", "late")):
        await redis.xadd(keys.jobs("sentiment"), {"m": encode(_job(rid, keys, text))})
    got, _ = await server.consumer.read(32, block_ms=None)
    await server.run(got)
    await server.batches.written()
    answered = await _replies(redis, keys)
    assert answered["ok"].kind == "result"
    assert (answered["unencodable"].kind, answered["unencodable"].code) == ("error", "internal")
    assert (answered["huge"].code, "bytes" in (answered["huge"].message or "")) == ("internal", True)
    assert (answered["late"].kind, answered["late"].code) == ("error", "deadline_exceeded")
    assert (await redis.xpending(keys.jobs("sentiment"), WORKER_GROUP))["pending"] == 0, "the batch was not acked"


class FailingStream(TokenModel):
    def stream(self, item: ModelInput) -> Iterator[Any]:
        yield "first"
        raise RuntimeError("the model broke mid-stream")


async def test_a_streaming_model_that_raises_is_answered_at_once(redis: Redis, prefix: str) -> None:
    keys = Keys(prefix)
    server = _server(redis, keys, FailingStream(ModelOptions()), task="generate")
    job = _job("gen", keys, "a b c", task="generate").model_copy(update={"stream": True})
    await server.streams.run(Delivery("0-1", job))
    replies = [Reply.model_validate_json(f[b"m"]) for _, f in await redis.xrange(keys.replies("g1"))]
    assert [(r.kind, r.code) for r in replies] == [("chunk", None), ("error", "internal")]


class BackendTimeout(VaderModel):
    """A threaded model whose backend times out on one input: its own TimeoutError, raised at once, not a hang."""

    def __init__(self, options: ModelOptions) -> None:
        super().__init__(options)
        self._info = dataclasses.replace(self._info, inline=False)

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        if any(i.text == "backend down" for i in batch):
            raise TimeoutError("the embedding backend did not answer")
        return super().predict(batch)


class ShortOutputs(VaderModel):
    """Returns one output fewer than its inputs (a plugin's bug), and its sort key fails."""

    def __init__(self, options: ModelOptions) -> None:
        super().__init__(options)
        self._info = dataclasses.replace(self._info, pads=True)

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        return super().predict(batch)[1:]

    def sort_key(self, item: ModelInput) -> int:
        raise ValueError("no length for this input")


@pytest.mark.parametrize(
    ("model_cls", "texts", "internal"),
    [
        (BackendTimeout, ["backend down", "a fine day"], {"j0", "j1"}),
        (ShortOutputs, ["a fine day", "a bad day", "a day"], {"j0", "j1", "j2"}),
    ],
)
async def test_a_model_error_is_answered_at_once_not_taken_for_a_hang_or_rerun(
    redis: Redis, prefix: str, model_cls: type[VaderModel], texts: list[str], internal: set[str]
) -> None:
    """A model's own TimeoutError is an error of its batch (before: the worker took it for a hung call and exited,
    and so did every worker the batch was re-run on); a wrong number of outputs fails its batch inside the model
    guard (before: outside it, so the batch was re-run and dead-lettered instead of answered)."""
    keys = Keys(prefix)
    model = model_cls(ModelOptions())
    model.load()
    server = _server(redis, keys, model)  # _no_hang fails the test if the call is taken as hung
    await server.consumer.ensure_group()
    for i, text in enumerate(texts):
        await redis.xadd(keys.jobs("sentiment"), {"m": encode(_job(f"j{i}", keys, text))})
    got, _ = await server.consumer.read(32, block_ms=None)
    assert len(got) == len(texts)
    await server.run(got)
    await server.batches.written()
    answered = await _replies(redis, keys)
    assert {rid for rid, r in answered.items() if (r.kind, r.code) == ("error", "internal")} == internal, answered
    assert len(answered) == len(texts)
    assert (await redis.xpending(keys.jobs("sentiment"), WORKER_GROUP))["pending"] == 0, "the batch was not acked"


async def test_replies_the_gateway_has_not_read_are_never_trimmed_and_every_reply_stream_expires(
    redis: Redis, prefix: str
) -> None:
    """A gateway far behind (a long pause, a burst of stream chunks) still finds every reply: workers cap no reply
    stream (their jobs are acked with the reply, so a trimmed reply was an answer lost). A reply stream that expired
    and is written again, by a dead letter, a rejection or a reply, expires again."""
    keys = Keys(prefix)
    model = VaderModel(ModelOptions())
    model.load()
    server = _server(redis, keys, model)
    await server.consumer.ensure_group()
    unread = 10_100
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(unread):
            pipe.xadd(keys.replies("g1"), {"m": b"unread %d" % i})
        await pipe.execute()
    await redis.xadd(keys.jobs("sentiment"), {"m": encode(_job("last", keys))})
    got, _ = await server.consumer.read(32, block_ms=None)
    await server.run(got)
    await server.batches.written()
    assert await redis.xlen(keys.replies("g1")) == unread + 1
    assert (await _replies(redis, keys, unread))["last"].kind == "result"
    assert 0 < await redis.ttl(keys.replies("g1")) <= 3600

    gone = _job("dead-lettered", keys).model_copy(update={"reply_to": keys.replies("gone")})
    await server.consumer.dead_letter(Delivery("0-1", gone), server.io.error(gone, ErrorCode.FAILED, "x"))
    rejected = orjson.loads(encode(_job("rejected", keys))) | {"v": 99, "reply_to": keys.replies("gone2")}
    await redis.xadd(keys.jobs("sentiment"), {"m": orjson.dumps(rejected)})
    _, bad = await server.consumer.read(32, block_ms=None)
    await server.consumer.reject(bad)
    for stream in (keys.replies("gone"), keys.replies("gone2")):
        assert await redis.xlen(stream) == 1
        assert 0 < await redis.ttl(stream) <= 3600, stream


async def test_jobs_read_with_an_entry_that_cannot_be_dead_lettered_now_still_run(redis: Redis, prefix: str) -> None:
    """Moving an unreadable entry to the dead letters fails (Redis refused it a moment): the good jobs read with it
    run at once (before: dropped while claimed, to wait for a reclaim), and the bad entry stays pending."""
    keys = Keys(prefix)
    model = VaderModel(ModelOptions())
    model.load()
    server = _server(redis, keys, model)
    await server.consumer.ensure_group()
    await redis.xadd(keys.jobs("sentiment"), {"m": b"not json"})
    await redis.xadd(keys.jobs("sentiment"), {"m": encode(_job("good", keys))})

    async def refused(bad: Any) -> None:
        raise ConnectionError("Redis went away for a moment")

    server.consumer.reject = refused  # type: ignore[method-assign]
    got = await server._gather(32, 0)
    assert [d.job.request_id for d in got] == ["good"]
    assert (await redis.xpending(keys.jobs("sentiment"), WORKER_GROUP))["pending"] == 2
