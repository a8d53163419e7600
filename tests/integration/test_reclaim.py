"""Jobs of dead workers, on real Redis and real processes: reclaimed, shared out among the live workers, and a
poison job dead-lettered alone."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import redis as redis_sync

from tests.support import procs
from tests.support.fake_models import LONG_TEXT, TOKENS_TASK
from tests.support.polling import until
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn


async def test_poison_job_is_dead_lettered_and_answered_failed(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RECLAIM_IDLE_MS": "500", "MAX_DELIVERIES": "2", "RTAI_TEST_SLOW_MS": "3000"}
    g = start(services, procs.gateway(env, prefix))
    workers = []
    c = None
    rid = "poison"
    for _ in range(3):  # each worker dies while running the job
        w = start(services, procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", **extra))
        workers.append(w)
        if c is None:
            g.wait_task("sentiment")
            c = await Conn(ws_url(g)).open()
            await c.infer("sentiment", "poison", rid=rid, deadline_ms=60000)
        await asyncio.sleep(1.0)
        w.kill()
    assert c is not None
    start(services, procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", **extra))
    final = await c.final(rid, timeout=20)
    assert final["code"] == "failed", final
    r = redis_sync.Redis.from_url(redis_server.url)
    dead = r.xrange(f"{prefix}:v1:dlq:sentiment")
    assert len(dead) == 1
    assert json.loads(dead[0][1][b"m"])["request_id"] == rid
    await c.close()


async def test_a_long_reclaimed_job_does_not_hold_up_the_reclaim_of_other_tasks(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A worker dies holding a batch job and a stream. Its successor runs the batch job for 4 s; the stream,
    another task's, must not wait for it. Before, the reclaim loop ran each reclaimed batch job itself, task after
    task, and reclaimed the stream only once the batch job was done."""
    env = procs.redis_env_for_url(redis_server.url)
    tasks = f"sentiment=tests.support.fake_models:slow,{TOKENS_TASK}"  # sentiment is reclaimed first
    dying = start(services, procs.worker(env, prefix, tasks=tasks, RTAI_TEST_HANG_ON="hold", RTAI_TEST_SLOW_MS="10"))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    batch = await c.infer("sentiment", "hold", deadline_ms=60_000)
    stream = await c.infer("generate", "hold", stream=True, deadline_ms=60_000)
    r = redis_sync.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 10
    while not all(r.xpending(f"{prefix}:v1:jobs:{t}", "workers")["pending"] for t in ("sentiment", "generate")):
        assert time.monotonic() < deadline, "the worker did not take both jobs"
        await asyncio.sleep(0.1)
    dying.kill()
    start(
        services,
        procs.worker(
            env, prefix, tasks=tasks, RTAI_TEST_SLOW_MS="4000", RTAI_TEST_TOKEN_MS="10", RECLAIM_IDLE_MS="500"
        ),
    )
    first = await c.wait_for(lambda f: f["type"] in ("result", "error"), 20)
    assert (first["id"], first["type"]) == (stream, "result"), f"the stream waited for the batch job: {first}"
    assert (await c.final(batch, timeout=20))["type"] == "result"
    await c.close()


async def test_a_poison_job_takes_only_itself_to_the_dead_letters_not_its_batch(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A job that crashes the worker, read in one batch with good ones: the good ones are answered, only the poison
    job ends `failed`. Reclaimed jobs run one at a time; re-run as a batch, all of them crashed every worker that
    took them until every one of them was dead-lettered. And a reclaimed job counts a delivery only when it starts:
    the ones queued behind the poison job, charged for each crash they did not run in, were dead-lettered too."""
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RECLAIM_IDLE_MS": "500", "MAX_DELIVERIES": "2", "tasks": "sentiment=tests.support.fake_models:crashing"}
    w = start(services, procs.worker(env, prefix, **extra))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    async with procs.stalled(w):  # queued while the worker is stopped, so that it reads them as one batch
        good = [await c.infer("sentiment", "good 0", deadline_ms=60_000)]
        poison = await c.infer("sentiment", "poison", rid="poison", deadline_ms=60_000)
        good += [await c.infer("sentiment", f"good {i}", deadline_ms=60_000) for i in (1, 2)]
        await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == good[-1])
    await _two_crashes_then_a_clean_worker(w, services, env, prefix, extra)
    finals = {rid: await c.final(rid, timeout=20) for rid in [*good, poison]}
    assert [finals[rid]["type"] for rid in good] == ["result"] * 3, finals
    assert finals[poison]["code"] == "failed", finals
    assert _dead_lettered(redis_server, prefix, "sentiment") == [poison]
    await c.close()


async def _two_crashes_then_a_clean_worker(
    first: procs.Service, services: list[procs.Service], env: dict[str, str], prefix: str, extra: dict[str, str]
) -> None:
    """`first` dies on the poison job (exit 70). The next worker reclaims the jobs, runs the one before the poison
    job and dies on it again. A third finds the poison job past its deliveries (dead-lettered) and runs the rest."""
    assert await asyncio.to_thread(first.proc.wait, 10) == 70  # type: ignore[union-attr]
    w = procs.worker(env, prefix, **extra)
    services.append(w)
    w.start(wait_ready=False)  # it may die before it would be seen ready
    assert await asyncio.to_thread(w.proc.wait, 20) == 70  # type: ignore[union-attr]
    start(services, procs.worker(env, prefix, **extra))


def _dead_lettered(redis_server: RedisHandle, prefix: str, task: str) -> list[str]:
    """Request ids in the task's dead-letter stream, oldest first."""
    r = redis_sync.Redis.from_url(redis_server.url)
    try:
        return [json.loads(e[1][b"m"])["request_id"] for e in r.xrange(f"{prefix}:v1:dlq:{task}")]
    finally:
        r.close()


async def test_a_poison_stream_takes_only_itself_to_the_dead_letters_not_the_streams_beside_it(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A stream that crashes the worker, started beside good streams: they all went down with it once. A reclaimed
    stream then runs alone, so the next crash takes only the poison stream down; run beside it again, the good
    streams were charged for each crash and dead-lettered with it."""
    env = procs.redis_env_for_url(redis_server.url)
    extra = {
        "RECLAIM_IDLE_MS": "500",
        "MAX_DELIVERIES": "2",
        "RTAI_TEST_TOKEN_MS": "50",
        "tasks": "generate=tests.support.fake_models:crashing_tokens",
    }
    w = start(services, procs.worker(env, prefix, **extra))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    async with procs.stalled(w):  # queued while the worker is stopped, so that it starts all three at once
        good = [await c.infer("generate", LONG_TEXT, stream=True, deadline_ms=60_000)]
        poison = await c.infer("generate", f"poison {LONG_TEXT}", rid="poison", stream=True, deadline_ms=60_000)
        good.append(await c.infer("generate", LONG_TEXT, stream=True, deadline_ms=60_000))
        await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == good[-1])
    await _two_crashes_then_a_clean_worker(w, services, env, prefix, extra)  # the first good stream runs alone
    finals = {rid: await c.final(rid, timeout=30) for rid in [*good, poison]}
    assert [finals[rid]["type"] for rid in good] == ["result"] * 2, finals
    assert finals[poison]["code"] == "failed", finals
    for rid in good:
        assert [f["index"] for f in c.by_id[rid] if f["type"] == "chunk"] == list(range(40))
    assert _dead_lettered(redis_server, prefix, "generate") == [poison]
    await c.close()


async def test_a_dead_workers_jobs_are_shared_out_among_the_live_workers(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], tmp_path: Path
) -> None:
    """A worker died holding 12 jobs of a threaded model (300 ms each). Reclaimed jobs run one at a time, so the
    first live worker to reclaim took all 12 and ran them for 3.6 s while the other stayed idle; now each takes a few
    at a time and both run them."""
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RECLAIM_IDLE_MS": "600", "RTAI_TEST_SLOW_MS": "300", "RTAI_TEST_COUNT_DIR": str(tmp_path)}
    slow = "sentiment=tests.support.fake_models:slow"
    first = start(services, procs.worker(env, prefix, tasks=slow, **extra))  # registers the task
    g = start(services, procs.gateway(env, prefix, ADMISSION__QUEUE_WHEN_NO_WORKERS="true"))
    g.wait_task("sentiment")
    assert first.stop() == 0
    c = await Conn(ws_url(g)).open()
    rids = [await c.infer("sentiment", f"x {i}", deadline_ms=60_000) for i in range(12)]
    for rid in rids:
        await c.wait_for(lambda f, rid=rid: f["type"] == "accepted" and f["id"] == rid)
    r = redis_sync.Redis.from_url(redis_server.url)
    stream = f"{prefix}:v1:jobs:sentiment"
    ((_, held),) = r.xreadgroup("workers", "dead", {stream: ">"}, count=12)  # the worker that died with them
    assert len(held) == 12
    live = [start(services, procs.worker(env, prefix, tasks=slow, **extra)) for _ in range(2)]
    for rid in rids:
        assert (await c.final(rid, timeout=30))["type"] == "result"
    ran = {w.proc.pid: 0 for w in live if w.proc is not None}
    for f in tmp_path.glob("*.txt"):
        if int(f.stem) in ran:
            ran[int(f.stem)] += sum(1 for line in f.read_text().splitlines() if line.startswith("x "))
    assert sum(ran.values()) == 12 and all(ran.values()), ran
    await c.close()


async def test_a_dead_workers_streams_are_shared_out_one_at_a_time(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A worker died holding 4 streams (2 s each). A reclaimed stream runs alone, so a worker takes the next one only
    once its last has ended; before, it took another as soon as the last had started (and another while that one
    waited for it), so one worker held them all while the other stayed idle."""
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RECLAIM_IDLE_MS": "600", "RTAI_TEST_TOKEN_MS": "100"}
    first = start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))  # registers the task
    g = start(services, procs.gateway(env, prefix, ADMISSION__QUEUE_WHEN_NO_WORKERS="true"))
    g.wait_task("generate")
    assert first.stop() == 0
    c = await Conn(ws_url(g)).open()
    words = " ".join(["word"] * 20)
    rids = [await c.infer("generate", words, stream=True, deadline_ms=60_000) for _ in range(4)]
    for rid in rids:
        await c.wait_for(lambda f, rid=rid: f["type"] == "accepted" and f["id"] == rid)
    r = redis_sync.Redis.from_url(redis_server.url)
    ((_, held),) = r.xreadgroup("workers", "dead", {f"{prefix}:v1:jobs:generate": ">"}, count=4)  # it died
    assert len(held) == 4
    stream = f"{prefix}:v1:jobs:generate"

    def taken_over() -> int:
        """Streams the live workers hold (the rest are still the dead worker's)."""
        return sum(c["pending"] for c in r.xpending(stream, "workers")["consumers"] if c["name"] != b"dead")

    live = [start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))]
    await until(lambda: taken_over() > 0, "the first worker reclaimed a stream")
    await asyncio.sleep(1.0)  # three more reclaim passes while its first stream runs
    assert taken_over() == 1, "the worker took more streams than it can start"
    live.append(start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra)))
    for rid in rids:
        assert (await c.final(rid, timeout=30))["type"] == "result"
    taken = [w.metric("rtai_worker_reclaimed_total") for w in live]
    assert sum(taken) == 4 and all(taken), taken
    await c.close()
