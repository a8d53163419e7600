"""Delivery guarantees, one behaviour per test, on real Redis and real processes."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import redis as redis_sync

from tests.support import procs
from tests.support.fake_models import LONG_TEXT, TOKENS_TASK
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn


async def test_cancel_stops_a_running_stream(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, RTAI_TEST_TOKEN_MS="50"))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    rid = await c.infer("generate", LONG_TEXT, stream=True)
    await c.wait_for(lambda f: f["type"] == "chunk" and f["id"] == rid and f["index"] >= 2, 10)
    await c.send({"type": "cancel", "id": rid})
    final = await c.final(rid)
    assert final["type"] == "error"
    assert final["code"] == "cancelled"
    await asyncio.sleep(1.0)
    chunks = [f for f in c.by_id[rid] if f["type"] == "chunk"]
    assert len(chunks) < 20, "generation went on after the cancel"
    assert len(c.finals(rid)) == 1
    # The gateway drops chunks after a final frame anyway: the worker's own count shows that it stopped generating
    # (40 words x 50 ms would still be running).
    metrics = httpx.get(f"{w.base}/metrics").text
    assert 'rtai_worker_jobs_total{outcome="cancelled",task="generate"} 1.0' in metrics, [
        ln for ln in metrics.splitlines() if ln.startswith("rtai_worker_jobs_total")
    ]
    await c.close()


async def test_cancel_removes_a_queued_job(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], tmp_path: Path
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    counting = "sentiment=tests.support.fake_models:counting"
    w = start(services, procs.worker(env, prefix, tasks=counting, RTAI_TEST_COUNT_DIR=str(tmp_path)))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    async with procs.stalled(w):
        rid = await c.infer("sentiment", "queued then cancelled")
        await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == rid)
        await c.send({"type": "cancel", "id": rid})
        assert (await c.final(rid))["code"] == "cancelled"
        r = redis_sync.Redis.from_url(redis_server.url)
        assert r.xlen(f"{prefix}:v1:jobs:sentiment") == 0, "the cancelled job is still queued"
    assert (await c.call("sentiment", "still works"))["type"] == "result"
    assert len(c.finals(rid)) == 1
    texts = "".join(f.read_text() for f in tmp_path.glob("*.txt"))
    assert "still works" in texts
    assert "queued then cancelled" not in texts, "the cancelled job was run"
    await c.close()


async def test_deadline_answered_by_gateway_with_no_worker_alive(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    w.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        final = await c.call("sentiment", "too late", deadline_ms=300)
        elapsed = time.monotonic() - t0
    finally:
        w.signal(signal.SIGCONT)
    assert final["code"] == "deadline_exceeded"
    assert elapsed < 3
    # The worker, once running again, drops the expired job instead of running it; still one final frame.
    await asyncio.sleep(1.5)
    assert len(c.finals(final["id"])) == 1
    metrics = httpx.get(f"{w.base}/metrics").text
    assert 'rtai_worker_jobs_total{outcome="expired",task="sentiment"} 1.0' in metrics
    await c.close()


async def test_retried_request_id_runs_once(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], tmp_path: object
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    count_dir = str(tmp_path)
    start(
        services,
        procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:counting", RTAI_TEST_COUNT_DIR=count_dir),
    )
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    for _ in range(3):  # while in flight and after it finished
        await c.infer("sentiment", "once-only please", rid="same-id")
    await c.final("same-id")
    await asyncio.sleep(0.5)
    await c.infer("sentiment", "once-only please", rid="same-id")  # its socket has the final: nothing again
    await asyncio.sleep(0.5)
    assert len(c.finals("same-id")) == 1, c.by_id["same-id"]
    from pathlib import Path

    lines = [
        ln for f in Path(count_dir).glob("*.txt") for ln in f.read_text().splitlines() if ln.startswith("once-only")
    ]
    assert len(lines) == 1
    await c.close()


async def test_resume_on_another_gateway_replays_missed_frames(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, RTAI_TEST_TOKEN_MS="30"))
    a = start(services, procs.gateway(env, prefix))
    b = start(services, procs.gateway(env, prefix))
    # A clean close cancels the session's work by design; resume is for connections that drop.
    c2 = await Conn(ws_url(a)).open()
    rid2 = await c2.infer("generate", LONG_TEXT, stream=True)
    await c2.wait_for(lambda f: f["type"] == "chunk" and f.get("id") == rid2 and f["index"] >= 3, 10)
    session, last_seq = c2.session, c2.last_seq
    c2.ws.transport.abort()  # the network drops: no close frame
    await asyncio.sleep(0.5)
    c3 = await Conn(ws_url(b)).open(hello={"type": "hello", "session": session, "last_seq": last_seq})
    welcome = c3.frames[0]
    assert welcome["resumed"] is True
    final = await c3.final(rid2, timeout=20)
    assert final["type"] == "result"
    before = [f for f in c2.frames if f.get("id") == rid2]
    after = [f for f in c3.frames if f.get("id") == rid2]
    indices = [f["index"] for f in before + after if f["type"] == "chunk"]
    assert indices == list(range(40)), "chunks missing or repeated across the reconnect"
    seqs = [f["seq"] for f in after if f.get("seq") is not None]
    assert seqs == sorted(seqs)
    assert min(seqs) == last_seq + 1
    # b tracked the request it took over and let go of it when a's final frame was forwarded to it.
    assert "rtai_gateway_inflight_requests 0.0" in httpx.get(f"{b.base}/metrics").text
    await c3.close()


async def test_worker_killed_mid_stream_rerun_skips_delivered_chunks(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RTAI_TEST_TOKEN_MS": "40", "RECLAIM_IDLE_MS": "800"}
    w1 = start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    rid = await c.infer("generate", LONG_TEXT, stream=True)
    await c.wait_for(lambda f: f["type"] == "chunk" and f["index"] >= 5, 10)
    w1.kill()
    start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))
    final = await c.final(rid, timeout=30)
    assert final["type"] == "result"
    indices = [f["index"] for f in c.by_id[rid] if f["type"] == "chunk"]
    assert indices == list(range(40)), indices
    assert len(c.finals(rid)) == 1
    await c.close()


async def test_long_stream_keeps_its_claim(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RTAI_TEST_TOKEN_MS": "60", "RECLAIM_IDLE_MS": "600"}
    w1 = start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))
    w2 = start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, **extra))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    # The claim's refresh, seen directly: the running stream's idle time in the group never reaches the reclaim
    # threshold. (Counting reruns alone could pass without it: the owner's own reclaim pass also resets the idle time
    # of a job it still runs, and may win the race against the other worker's.)
    r = redis_sync.Redis.from_url(redis_server.url)
    idle_seen: list[int] = []

    async def watch_idle() -> None:
        while True:
            pending = r.xpending_range(f"{prefix}:v1:jobs:generate", "workers", min="-", max="+", count=10)
            idle_seen.extend(int(p["time_since_delivered"]) for p in pending)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_idle())
    try:
        final = await c.call("generate", LONG_TEXT, timeout=30, stream=True)  # ~2.4 s, four times the reclaim idle
    finally:
        watcher.cancel()
    assert final["type"] == "result"
    assert len(idle_seen) > 10, idle_seen
    assert max(idle_seen) < 600, f"the stream's claim went stale: idle up to {max(idle_seen)} ms"
    reruns = 0.0
    for w in (w1, w2):
        for line in httpx.get(f"{w.base}/metrics").text.splitlines():
            if line.startswith(("rtai_worker_reruns_total", "rtai_worker_reclaimed_total")):
                reruns += float(line.rsplit(" ", 1)[1])
    assert reruns == 0, "a live stream was taken over by the reclaimer"
    await c.close()


async def test_worker_sigterm_finishes_its_batch_and_exits(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    w = start(
        services,
        procs.worker(
            env, prefix, tasks="sentiment=tests.support.fake_models:slow", RTAI_TEST_SLOW_MS="700", SHUTDOWN_GRACE_S="5"
        ),
    )
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    rids = [await c.infer("sentiment", f"drain {i}") for i in range(5)]
    await asyncio.sleep(0.3)  # the batch is running
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    code = await asyncio.to_thread(w.proc.wait, 15)  # type: ignore[union-attr]
    assert code == 0
    assert time.monotonic() - t0 < 6
    # The batch it was running was answered before it left; what it never read waits for the next worker.
    answered = [r for r in rids if c.finals(r)]
    assert answered, "the running batch was not finished before exit"
    start(services, procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", RTAI_TEST_SLOW_MS="50"))
    finals = [await c.final(r, timeout=10) for r in rids]
    assert all(f["type"] == "result" for f in finals), finals
    await c.close()


async def test_work_adopted_from_a_live_gateway_is_rerun_once_that_gateway_dies(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A client resumes on B while A still lives (so B leaves the job to A), then A dies before the job ran: its
    reply would go to A's stream, which nobody reads any more. B notices A is gone and runs the job again."""
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix))
    a = start(services, procs.gateway(env, prefix))
    b = start(services, procs.gateway(env, prefix))
    async with procs.stalled(w):
        c = await Conn(ws_url(a)).open()
        rid = await c.infer("sentiment", "adopted", deadline_ms=60_000)
        await c.wait_for(lambda f: f["type"] == "accepted" and f.get("id") == rid)
        c.ws.transport.abort()  # the network drops: the session waits for a resume
        await asyncio.sleep(0.3)
        c2 = await Conn(ws_url(b)).open(hello={"type": "hello", "session": c.session, "last_seq": c.last_seq})
        assert c2.frames[0]["resumed"] is True
        a.kill()
        await asyncio.sleep(6.5)  # A's liveness key (5 s) runs out; B's heartbeat looks every second
    final = await c2.final(rid, timeout=15)
    assert final["type"] == "result", final
    assert len(c2.finals(rid)) == 1
    await c2.close()


async def _until_refused_unavailable(c: Conn, within_s: float) -> None:
    """Send fresh requests until one is refused `unavailable` (those accepted before wait in the queue)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        fresh = await c.infer("sentiment", "a new request")
        first = await c.wait_for(lambda f, rid=fresh: f.get("id") == rid and f["type"] in ("accepted", "error"))
        if first["type"] == "error":
            assert first["code"] == "unavailable", first
            return
        assert asyncio.get_running_loop().time() < deadline, "the gateway still counts the stopped worker as live"
        await asyncio.sleep(0.2)


async def test_a_request_sent_again_while_its_task_has_no_live_worker_is_not_refused(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A client sends its unfinished requests again after a reconnect. While the task's workers are all away (here:
    stopped until their registration lapses) the copy of a request in flight must not end it with `unavailable`."""
    env = procs.redis_env_for_url(redis_server.url)
    # A registration that outlives the stall's first second (heartbeats every 0.75 s), so the first request is
    # accepted whenever the last heartbeat fell; the lapse is then awaited, not guessed.
    w = start(services, procs.worker(env, prefix, REGISTRATION_TTL_S="3"))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    async with procs.stalled(w):
        rid = await c.infer("sentiment", "in flight while the worker is away", deadline_ms=30_000)
        await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == rid)
        await _until_refused_unavailable(c, within_s=10)  # the registration lapsed and the gateway's catalog saw it
        await c.infer("sentiment", "in flight while the worker is away", rid=rid, deadline_ms=30_000)
        await c.send({"type": "cancel", "id": "nothing"})  # a round trip: the copy has been handled
        await c.wait_for(lambda f: f.get("id") == "nothing")
        assert c.finals(rid) == [], c.by_id[rid]
    final = await c.final(rid, timeout=15)
    assert final["type"] == "result", final
    await asyncio.sleep(0.3)
    assert len(c.finals(rid)) == 1
    await c.close()
    # A worker back from a pause still drains and exits by itself (before: a cancel its heartbeat's Redis call
    # swallowed kept that loop, and the shutdown waiting for it, going until the process was killed).
    assert w.stop(timeout=10) == 0, w.logs()[-2000:]
