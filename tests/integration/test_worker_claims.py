"""Claims of the worker's jobs on a real Redis: reclaimed from dead workers with their delivery counts, adopted and
run one at a time, refreshed while they run, handed back at a stop, and the group's gone consumers pruned."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from rtai_protocol import encode
from rtai_transport import WORKER_GROUP, Keys, Redis
from rtai_worker.consumer import Consumer
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.vader import VaderModel
from rtai_worker.run import Worker
from rtai_worker.settings import WorkerSettings
from tests.support import procs
from tests.support.polling import until
from tests.support.redis_server import RedisHandle
from tests.support.task_server_harness import make_job, task_server
from tests.support.ws_client import Conn


async def test_reclaimed_jobs_keep_their_delivery_counts_among_many_of_the_reclaimers_own(
    redis: Redis, prefix: str
) -> None:
    """The delivery counts of reclaimed jobs come from a pending-entries range that also lists the reclaiming
    worker's own running jobs; where those crowd a reclaimed job out, its count is still the true one (a guess could
    keep a poison job below the dead-letter limit for good)."""
    keys = Keys(prefix)
    stream = keys.jobs("sentiment")
    mine = Consumer(redis, keys, "sentiment", "w1")
    await mine.ensure_group()
    ids = [(await redis.xadd(stream, {"m": encode(make_job(n, keys.replies("g1")))})).decode() for n in range(40)]
    # A worker that died read the first job and the last; this one the 38 between, and runs them.
    await redis.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=1)
    await redis.xreadgroup(WORKER_GROUP, "w1", {stream: ">"}, count=38)
    await redis.xreadgroup(WORKER_GROUP, "dead", {stream: ">"}, count=1)
    for _ in range(3):  # the last job went round three more times before
        await redis.xclaim(stream, WORKER_GROUP, "dead", 0, [ids[-1]])
    await asyncio.sleep(0.3)
    await redis.xclaim(stream, WORKER_GROUP, "w1", 0, ids[1:39], justid=True)  # running: not idle
    claimed = await mine.reclaim(min_idle_ms=200)
    assert {d.entry_id: d.deliveries for d in claimed} == {ids[0]: 2, ids[-1]: 5}


class _CountingVader(VaderModel):
    def __init__(self, options: ModelOptions) -> None:
        super().__init__(options)
        self.texts: list[str] = []

    def predict(self, batch: Any) -> list[Any]:
        self.texts += [i.text for i in batch]
        return super().predict(batch)


async def test_an_adopted_job_counts_its_delivery_when_it_starts_and_is_not_run_once_acked(
    redis: Redis, prefix: str
) -> None:
    """Reclaiming counts a delivery for every job claimed; an adopted job gives it back until it starts, so the jobs
    queued behind one that crashes the worker are not charged for it. One that its first owner finished meanwhile
    (it was only paused) is not run again."""
    keys = Keys(prefix)
    stream = keys.jobs("sentiment")
    model = _CountingVader(ModelOptions())
    consumer = Consumer(redis, keys, "sentiment", "w1")
    server = task_server(consumer, model)
    await consumer.ensure_group()
    for n in range(2):
        await redis.xadd(stream, {"m": encode(make_job(n, keys.replies("g1"), input=f"job {n}"))})
    await redis.xreadgroup(WORKER_GROUP, "paused", {stream: ">"}, count=2)
    await asyncio.sleep(0.3)
    claimed = await consumer.reclaim(min_idle_ms=200)
    assert [d.deliveries for d in claimed] == [2, 2]

    async def count(entry_id: str) -> int:
        return int((await redis.xpending_range(stream, WORKER_GROUP, entry_id, entry_id, 1))[0]["times_delivered"])

    await server.adopt(claimed)
    assert [await count(d.entry_id) for d in claimed] == [1, 1], "charged before they ran"
    first, second = claimed
    await server._run_adopted(first)
    assert model.texts == ["job 0"]
    assert await count(second.entry_id) == 1, "the job behind was charged for the one before it"
    await redis.xack(stream, WORKER_GROUP, second.entry_id)  # its first owner wakes up and finishes it
    await server._run_adopted(second)
    assert model.texts == ["job 0"], "a job already finished was run again"
    assert server.running == {}


async def test_claims_are_refreshed_counted_and_handed_back_only_by_their_owner(redis: Redis, prefix: str) -> None:
    """A worker back from a long pause must not take back a job another worker reclaimed meanwhile (both would run
    it, and one's delivery count would overwrite the other's): its refresh, count and hand-back leave that job to
    the new owner and report it taken over."""
    keys = Keys(prefix)
    stream = keys.jobs("sentiment")
    paused, other = Consumer(redis, keys, "sentiment", "paused"), Consumer(redis, keys, "sentiment", "other")
    await paused.ensure_group()
    job, mine, trimmed = [
        (await redis.xadd(stream, {"m": encode(make_job(n, keys.replies("g1")))})).decode() for n in range(3)
    ]
    await paused.read(3, block_ms=None)
    await asyncio.sleep(0.3)
    (taken,) = await other.reclaim(min_idle_ms=200, count=1)  # the paused worker's first job
    assert (taken.entry_id, taken.deliveries) == (job, 2)

    async def pending(entry_id: str) -> tuple[str, int]:
        (p,) = await redis.xpending_range(stream, WORKER_GROUP, entry_id, entry_id, 1)
        return p["consumer"].decode(), int(p["times_delivered"])

    assert await paused.keep_claimed([job, mine]) == {job}
    assert await paused.count_deliveries([(job, 1), (mine, 1)]) == {mine}
    await redis.xdel(stream, trimmed)  # gone from the stream while pending: nobody's to run
    assert await paused.count_deliveries([(trimmed, 1)]) == set()
    await paused.hand_back([(job, None)], idle_ms=3_600_000)
    assert await pending(job) == ("other", 2), "the paused worker took the job back, or changed its count"
    assert await pending(mine) == ("paused", 1)
    idle = {p["message_id"].decode(): p["time_since_delivered"] for p in await redis.xpending_range(
        stream, WORKER_GROUP, "-", "+", 10)}  # fmt: skip
    assert idle[job] < 60_000, "handed back by a worker that no longer owned it"
    assert await other.keep_claimed([job]) == set()
    await redis.xack(stream, WORKER_GROUP, job)  # finished by its new owner: gone, not taken
    assert await paused.keep_claimed([job, mine]) == set()


async def test_a_job_left_behind_many_running_ones_is_reclaimed(redis: Redis, prefix: str) -> None:
    """A dead worker's job behind 700 pending jobs of live workers: XAUTOCLAIM looks at 640 pending entries a call
    (count 64), so a scan that always started at the front never reached it (before: reclaimed never)."""
    keys = Keys(prefix)
    stream = keys.jobs("sentiment")
    busy, dead, reclaimer = (Consumer(redis, keys, "sentiment", n) for n in ("busy", "dead", "reclaimer"))
    await busy.ensure_group()
    async with redis.pipeline(transaction=False) as pipe:
        for n in range(700):
            pipe.xadd(stream, {"m": encode(make_job(n, keys.replies("g1")))})
        await pipe.execute()
    running, _ = await busy.read(700, block_ms=None)
    left = (await redis.xadd(stream, {"m": encode(make_job(700, keys.replies("g1")))})).decode()
    await dead.read(1, block_ms=None)
    await asyncio.sleep(0.3)
    await busy.keep_claimed([d.entry_id for d in running])  # the live worker's jobs are fresh again
    assert [d.entry_id for d in await reclaimer.reclaim(min_idle_ms=200)] == [left]


async def test_a_failed_prune_of_gone_consumers_does_not_cost_the_reclaim(
    redis: Redis, redis_server: RedisHandle, prefix: str
) -> None:
    """Pruning gone consumers is housekeeping: refused (an ACL written before it, say), the same pass still reclaims
    the jobs of a dead worker."""
    keys = Keys(prefix)
    settings = WorkerSettings(redis={"url": redis_server.url, "prefix": prefix}, reclaim_idle_ms=300)
    worker = Worker(settings)
    try:
        model = VaderModel(ModelOptions())
        server = task_server(Consumer(redis, keys, "sentiment", "live"), model, settings)
        worker.servers["sentiment"] = server
        await server.consumer.ensure_group()
        await redis.xadd(keys.jobs("sentiment"), {"m": encode(make_job(1, keys.replies("g1")))})
        await Consumer(redis, keys, "sentiment", "dead").read(1, block_ms=None)
        await asyncio.sleep(0.4)

        async def refused(*_: Any, **__: Any) -> int:
            raise RedisConnectionError("NOPERM this user has no permissions to run the 'xinfo|consumers' command")

        server.consumer.prune_consumers = refused  # type: ignore[method-assign]
        await worker._reclaim()
        assert [d.job.request_id for d in server._adopted] == ["r1"]
    finally:
        for client in (worker.redis, worker.reader, worker.probe):
            await client.aclose()


async def test_gone_consumers_leave_the_group_but_never_one_with_pending_jobs(redis: Redis, prefix: str) -> None:
    """Every worker process is a consumer of its own: the gone ones (idle, nothing pending) are removed, a worker
    leaves at its shutdown, and a consumer that still holds a job (handed back, not yet taken over) stays, since
    removing it would drop its pending entry and the job would never be reclaimed."""
    keys = Keys(prefix)
    stream = keys.jobs("sentiment")
    gone, holding, me = (Consumer(redis, keys, "sentiment", n) for n in ("gone", "holding", "me"))
    await gone.ensure_group()
    ids = [(await redis.xadd(stream, {"m": encode(make_job(n, keys.replies("g1")))})).decode() for n in range(3)]
    for c in (gone, holding, me):
        await c.read(1, block_ms=None)
    await redis.xack(stream, WORKER_GROUP, ids[0], ids[2])  # gone and me finished theirs; holding did not

    async def names() -> set[str]:
        return {c["name"].decode() for c in await redis.xinfo_consumers(stream, WORKER_GROUP)}

    assert await me.prune_consumers(60_000) == 0  # nobody idle that long
    await asyncio.sleep(0.3)
    assert await me.prune_consumers(200) == 2  # gone, and me (idle too); holding has its job pending
    assert await names() == {"holding"}
    await holding.read(1, block_ms=None)  # nothing new: still its pending job
    assert await holding.prune_consumers(60_000, including_self=True) == 0
    await redis.xack(stream, WORKER_GROUP, ids[1])
    assert await holding.prune_consumers(60_000, including_self=True) == 1
    assert await names() == set()


async def test_a_paused_worker_leaves_its_reclaimed_stream_to_the_worker_that_took_it(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """Worker A stops (SIGSTOP) mid-stream; B reclaims the stream and runs it; A comes back. A must not take the
    claim back: it stops its own run at the next chunk, answers and acks nothing, and counts the claim lost. The
    client gets every chunk and one final."""
    from tests.support.fake_models import LONG_TEXT, TOKENS_TASK

    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RTAI_TEST_TOKEN_MS": "60", "RECLAIM_IDLE_MS": "800"}
    a = procs.start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))
    g = procs.start(services, procs.gateway(env, prefix))
    c = await Conn(procs.ws_url(g)).open()
    rid = await c.infer("generate", LONG_TEXT, stream=True)  # 40 chunks, ~2.4 s
    await c.wait_for(lambda f: f["type"] == "chunk" and f["id"] == rid and f["index"] >= 2, 10)
    a.signal(signal.SIGSTOP)
    try:
        b = procs.start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))
        await until(lambda: b.metric("rtai_worker_reclaimed_total") >= 1, "B reclaimed nothing")
        await c.wait_for(lambda f: f["type"] == "chunk" and f["id"] == rid and f["index"] >= 10, 10)
    finally:
        a.signal(signal.SIGCONT)
    final = await c.final(rid, timeout=20)
    assert final["type"] == "result", final
    await until(lambda: a.metric("rtai_worker_claims_lost_total") == 1, "A counted no lost claim", 5)
    await asyncio.sleep(0.5)
    assert len(c.finals(rid)) == 1
    assert [f["index"] for f in c.by_id[rid] if f["type"] == "chunk"] == list(range(40))
    assert a.metric('rtai_worker_jobs_total{outcome="ok"') == 0, "the paused worker finished the stream too"
    assert b.metric('rtai_worker_jobs_total{outcome="ok"') == 1
    await c.close()


async def test_a_workers_own_running_jobs_caught_by_its_reclaim_keep_their_delivery_count(
    redis_server: RedisHandle, prefix: str
) -> None:
    """After a long pause (GC, SIGSTOP) a worker's own running jobs look idle, and its own reclaim claims them,
    counting a delivery each. They were delivered once: the count is set back, or every pause would bring a long
    job one step closer to the dead letters."""
    from rtai_transport import RedisSettings, close_redis
    from rtai_worker.run import Worker

    settings = WorkerSettings(
        redis=RedisSettings(url=redis_server.url, prefix=prefix), tasks="sentiment=vader", reclaim_idle_ms=300
    )
    worker = Worker(settings)
    try:
        await worker.load()
        server = worker.servers["sentiment"]
        stream = worker.keys.jobs("sentiment")
        await server.consumer.ensure_group()
        await worker.redis.xadd(stream, {"m": encode(make_job(0, worker.keys.replies("g1")))})
        (d,), _ = await server.consumer.read(1, block_ms=None)
        server.running.add(d)  # running here, through a pause longer than reclaim_idle_ms
        await asyncio.sleep(0.4)
        await worker._reclaim()
        (p,) = await worker.redis.xpending_range(stream, WORKER_GROUP, d.entry_id, d.entry_id, 1)
        assert (p["consumer"].decode(), p["times_delivered"]) == (settings.worker_id, 1)
        assert server.running == {d.entry_id: d}, "its own running job was adopted as if reclaimed"
    finally:
        for client in (worker.redis, worker.reader, worker.probe):
            await close_redis(client)


async def test_a_reclaim_whose_unreadable_entries_cannot_be_rejected_still_returns_its_jobs(
    redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XAUTOCLAIM has made the reclaimer the owner of every entry it returned: a failure to dead-letter the unreadable
    ones must not drop the good ones too (they would wait for the next reclaim, charged one more delivery)."""
    keys = Keys(prefix)
    stream = keys.jobs("sentiment")
    dead, reclaimer = Consumer(redis, keys, "sentiment", "dead"), Consumer(redis, keys, "sentiment", "reclaimer")
    await dead.ensure_group()
    good = (await redis.xadd(stream, {"m": encode(make_job(1, keys.replies("g1")))})).decode()
    await redis.xadd(stream, {"m": b"not json"})
    await dead.read(2, block_ms=None)
    await asyncio.sleep(0.3)

    async def refused(_bad: object) -> None:
        raise ConnectionError("the dead-letter write failed")

    monkeypatch.setattr(reclaimer, "reject", refused)
    assert [d.entry_id for d in await reclaimer.reclaim(min_idle_ms=200)] == [good]
