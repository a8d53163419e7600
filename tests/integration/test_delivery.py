"""Delivery guarantees, one behaviour per test, on real Redis and real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import redis as redis_sync
import websockets
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from tests.support import procs
from tests.support.fake_models import LONG_TEXT, TOKENS_TASK
from tests.support.polling import until
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.slow_client import slow_reader_socket
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


async def test_slow_reader_is_closed_with_1013(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    start(services, procs.worker(env, prefix, MAX_BATCH_SIZE="128"))
    g = start(
        services,
        procs.gateway(env, prefix, LIMITS__SEND_QUEUE_FRAMES="32", ADMISSION__MAX_INFLIGHT_PER_CONNECTION="100000"),
    )
    sock = slow_reader_socket(g.port)
    ws = await websockets.connect(ws_url(g), sock=sock, max_size=None, max_queue=1)
    await ws.send(json.dumps({"type": "hello"}))
    # Send without reading: the server's frames (most of them `rate_limited` refusals) fill the kernel's buffers, then
    # the transport's, then the bounded queue, until it gives up on us. The kernel alone takes a few MB on loopback.
    closed = None
    given_up = False
    for i in range(200_000):
        try:
            await ws.send(json.dumps({"type": "infer", "id": f"s{i}", "task": "sentiment", "input": "x" * 200}))
        except websockets.ConnectionClosed as e:
            closed = e
            break
        if i % 200 == 0:
            await asyncio.sleep(0.01)
        if i % 2000 == 1999:
            given_up = "rtai_gateway_slow_client_closes_total 1.0" in httpx.get(f"{g.base}/metrics").text
            if given_up:
                break
    given_up = given_up or "rtai_gateway_slow_client_closes_total 1.0" in httpx.get(f"{g.base}/metrics").text
    assert given_up, "the slow reader was not closed"
    if closed is None:
        try:
            for _ in range(300_000):  # what the kernel buffered before the close frame
                await ws.recv()
        except websockets.ConnectionClosed as e:
            closed = e
    assert closed is not None
    # The close frame does not wait for the frames the gateway dropped: a client that reads gets it.
    assert closed.rcvd is not None and closed.rcvd.code == 1013, closed
    # The gateway keeps serving others.
    c = await Conn(ws_url(g)).open()
    assert (await c.call("sentiment", "fine")).get("type") == "result"
    await c.close()


async def test_a_client_that_never_reads_is_cut_off(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A client that floods without reading is given up on (1013); as it does not read that close frame either, the
    gateway aborts its socket after `limits.close_timeout_s` instead of keeping it, buffers and all, for as long as
    the client keeps TCP alive."""
    env = procs.redis_env_for_url(redis_server.url)
    # Results of 64 KB: a few hundred fill the socket's buffers and the send queue, and the gateway gives up on the
    # client while frames still wait for it to read them.
    start(services, procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:bulky"))
    g = start(
        services,
        procs.gateway(
            env,
            prefix,
            LIMITS__CLOSE_TIMEOUT_S="1",
            LIMITS__SEND_QUEUE_FRAMES="64",
            ADMISSION__MAX_INFLIGHT_PER_CONNECTION="100000",
        ),
    )
    sock = await asyncio.to_thread(_flood_without_reading, g)
    try:
        gave_up = time.monotonic()
        gateway = psutil.Process(g.pid)
        client_port = sock.getsockname()[1]
        while _has_peer(gateway, client_port) and time.monotonic() - gave_up < 15:
            await asyncio.sleep(0.2)
        held_s = time.monotonic() - gave_up
        assert not _has_peer(gateway, client_port), f"the gateway still holds the socket {held_s:.1f} s after giving up"
        assert "rtai_gateway_aborted_sockets_total 1.0" in httpx.get(f"{g.base}/metrics").text
        c = await Conn(ws_url(g)).open()
        assert (await c.call("sentiment", "still serving")).get("type") == "result"
        await c.close()
    finally:
        sock.close()


def _flood_without_reading(g: procs.Service) -> socket.socket:
    """Open a WebSocket on a plain blocking socket and send requests until the gateway gives up on it, reading
    nothing but the handshake's response (a client library would read the close frame, and answer it). Returns the
    socket, still open."""
    client = ClientProtocol(parse_uri(ws_url(g)))
    sock = slow_reader_socket(g.port)
    sock.settimeout(10)
    client.send_request(client.connect())
    sock.sendall(b"".join(client.data_to_send()))
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)  # a byte at a time: not one byte past the handshake
    client.receive_data(response)
    assert client.handshake_exc is None, client.handshake_exc
    client.send_text(json.dumps({"type": "hello"}).encode())
    # 300 results of 64 KB (19 MB): more than the socket's buffers and the send queue hold together.
    for i in range(300):
        client.send_text(json.dumps({"type": "infer", "id": f"n{i}", "task": "sentiment", "input": "fine"}).encode())
        sock.sendall(b"".join(client.data_to_send()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "rtai_gateway_slow_client_closes_total 1.0" in httpx.get(f"{g.base}/metrics").text:
            return sock
        time.sleep(0.2)
    sock.close()
    raise AssertionError("300 unread results of 64 KB did not make the gateway give up on the socket")


def _has_peer(process: psutil.Process, port: int) -> bool:
    """Whether `process` has a TCP socket whose remote end is 127.0.0.1:`port`."""
    return any(c.raddr and c.raddr.port == port for c in process.net_connections(kind="tcp"))


async def test_flood_past_backlog_is_refused_not_queued(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix))
    unlimited = {
        "LIMITS__MESSAGES_PER_S": "100000",
        "LIMITS__MESSAGE_BURST": "100000",
        "LIMITS__MAX_INFLIGHT_PER_USER": "1000",
    }
    g = start(services, procs.gateway(env, prefix, ADMISSION__MAX_BACKLOG="50", **unlimited))
    c = await Conn(ws_url(g)).open()
    w.signal(signal.SIGSTOP)
    try:
        rids = [await c.infer("sentiment", f"flood {i}") for i in range(300)]
        await asyncio.sleep(1.0)
        refused = [c.finals(r)[0] for r in rids if c.finals(r)]
        assert len(refused) >= 200
        assert {f["code"] for f in refused} == {"overloaded"}
        assert all(f["retry_after_ms"] > 0 for f in refused)
        r = redis_sync.Redis.from_url(redis_server.url)
        assert r.xlen(f"{prefix}:v1:jobs:sentiment") <= 60, "the queue grew past its limit"
    finally:
        w.signal(signal.SIGCONT)
    for rid in rids:
        assert (await c.final(rid, timeout=20))["type"] in ("result", "error")
        assert len(c.finals(rid)) == 1
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


async def test_admission_caps_in_flight_per_connection_and_refuses_on_old_backlog(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """With the worker stalled: a connection's fourth request over a cap of 3 is refused; once the oldest queued job
    is older than the limit, every connection is refused; both as `overloaded` with a retry hint, and both recover."""
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix))
    limits = {
        "ADMISSION__MAX_INFLIGHT_PER_CONNECTION": "3",
        "ADMISSION__MAX_OLDEST_AGE_S": "1.5",
        "LIMITS__MAX_INFLIGHT_PER_USER": "100",
    }
    g = start(services, procs.gateway(env, prefix, **limits))
    c, d = await Conn(ws_url(g)).open(), await Conn(ws_url(g)).open()
    async with procs.stalled(w):
        rids = [await c.infer("sentiment", f"held {i}") for i in range(4)]
        refused = await c.final(rids[3])
        assert (refused["code"], refused["retry_after_ms"] > 0) == ("overloaded", True), refused
        assert "per connection" in refused["message"]
        await asyncio.sleep(2.0)  # the oldest queued job passes 1.5 s (backlog re-read every 0.25 s)
        old = await d.call("sentiment", "behind an old backlog")
        assert (old["type"], old["code"]) == ("error", "overloaded"), old
        assert "waited" in old["message"]
    for rid in rids[:3]:
        assert (await c.final(rid))["type"] == "result"
    await asyncio.sleep(0.5)  # the drained backlog is re-read
    assert (await d.call("sentiment", "after the drain"))["type"] == "result"
    await c.close()
    await d.close()


async def test_a_request_sent_again_while_its_task_has_no_live_worker_is_not_refused(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A client sends its unfinished requests again after a reconnect. While the task's workers are all away (here:
    stopped until their registration lapses) the copy of a request in flight must not end it with `unavailable`."""
    env = procs.redis_env_for_url(redis_server.url)
    w = start(services, procs.worker(env, prefix, REGISTRATION_TTL_S="1"))
    g = start(services, procs.gateway(env, prefix))
    c = await Conn(ws_url(g)).open()
    async with procs.stalled(w):
        rid = await c.infer("sentiment", "in flight while the worker is away", deadline_ms=30_000)
        await c.wait_for(lambda f: f["type"] == "accepted" and f["id"] == rid)
        await asyncio.sleep(2.5)  # the stopped worker's registration lapses; the gateway's catalog sees no worker
        fresh = await c.call("sentiment", "a new request")
        assert (fresh["type"], fresh.get("code")) == ("error", "unavailable"), fresh
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
