"""What a Sentinel failover can do to the last writes before it, replayed deterministically on one real Redis.

Replication is asynchronous: the promoted replica may lack the master's last increments of a session's frame counter,
the log entries that went with them, and a request's stored final frame, although the client already received those
frames. The test removes exactly those writes (as the failover would) and checks the two promises that depend on them:
new frames are still numbered above what the client has (else the client and the gateway drop them as seen), and a
re-run's result never reaches the client as a second final frame.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rtai_gateway import admission, lifecycle, relay, worker_replies
from rtai_gateway.hub import Hub
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_protocol import ErrorCode, Forward, Infer, Job, Reply, Result, encode
from rtai_transport import Keys, Redis
from rtai_transport.lua import LOG_FRAME, SUBMIT
from tests.support import procs
from tests.support.hub_harness import RecordingConn, job_for, running_hub
from tests.support.redis_server import RedisHandle
from tests.support.requests_state import job_of, reply_as_worker, request_key
from tests.support.ws_client import Conn


@pytest.fixture
async def conn(redis_server: RedisHandle, prefix: str, services: list[procs.Service]) -> AsyncIterator[Conn]:
    g, _ = procs.vader_stack(redis_server.url, prefix, services)
    c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
    yield c
    await c.close()


async def _lose_last_writes(redis: Redis, keys: Keys, c: Conn, rid: str) -> Job:
    """Undo, as a failover to a lagging replica would, the result frame of `rid`: its counter increment, its log
    entry and the request's stored final. Returns the request's job."""
    assert c.session is not None
    req_key = await request_key(redis, keys, rid)
    job = await job_of(redis, keys, rid)
    top = c.last_seq
    await redis.set(keys.session_seq(c.session), top - 1)
    await redis.xdel(keys.session_log(c.session), f"{top}-1")
    await redis.hdel(req_key, "final")
    return job


async def test_frames_after_lost_counter_increments_are_numbered_above_what_the_client_has(
    redis: Redis, prefix: str, conn: Conn
) -> None:
    keys = Keys(prefix)
    assert (await conn.call("sentiment", "before the failover"))["type"] == "result"
    had = conn.last_seq
    await _lose_last_writes(redis, keys, conn, conn.frames[-1]["id"])

    rid = await conn.infer("sentiment", "after the failover")
    await conn.final(rid)
    frames = conn.by_id[rid]
    assert [f["type"] for f in frames] == ["accepted", "result"], frames
    assert had < frames[0]["seq"] < frames[1]["seq"], (had, frames)


async def test_a_rerun_result_after_a_lost_final_is_not_a_second_final(redis: Redis, prefix: str, conn: Conn) -> None:
    keys = Keys(prefix)
    first = await conn.infer("sentiment", "answered, then re-run")
    await conn.final(first)
    job = await _lose_last_writes(redis, keys, conn, first)
    await reply_as_worker(redis, job, {"label": "positive"})
    # Served after the gateway read the re-run's reply (one reply stream, read in order).
    assert (await conn.call("sentiment", "next request"))["type"] == "result"
    await asyncio.sleep(0.2)
    assert [f["type"] for f in conn.by_id[first]] == ["accepted", "result"], conn.by_id[first]


async def test_a_resent_submit_returns_what_the_first_run_admitted(redis: Redis, prefix: str) -> None:
    """The connection drops after SUBMIT ran but before its answer arrived; redis-py sends the pipeline again. The
    second run must hand back the queued entry, the `accepted` frame's seq and the stored job, so the gateway can
    track the request and send `accepted` (it did neither before, and the client saw a result with no `accepted`)."""
    keys = Keys(prefix)
    submit = redis.register_script(SUBMIT)
    job = Job(
        job_id="j1", request_id="r1", owner="o", session="s1", task="sentiment", input="hi",
        deadline_ms=2**40, enqueued_ms=0, reply_to=keys.replies("g1"),
    )  # fmt: skip
    keys_ = [
        keys.request("o", "r1"),
        keys.jobs("sentiment"),
        keys.session_inflight("s1"),
        keys.session_seq("s1"),
        keys.session_log("s1"),
    ]
    args = [encode(job), "s1", "r1", 60, 1000, 60, b'{"type":"accepted","id":"r1"}', 100, 0]
    first = await submit(keys=keys_, args=args)
    again = await submit(keys=keys_, args=args)
    assert first[0] == b"new"
    assert again[0] == b"inflight"
    assert (again[1], int(again[2])) == (first[1], int(first[2]))
    assert Job.model_validate_json(again[3]) == job
    assert await redis.xlen(keys.jobs("sentiment")) == 1, "re-sent, and queued twice"


def _log_frame_call(keys: Keys, rid: str, body: bytes, kind: str, index: int) -> tuple[list[str], list[Any]]:
    """LOG_FRAME's keys and arguments for request `rid` of session s1 (as `SessionLog.append` builds them)."""
    k = [
        keys.session_seq("s1"),
        keys.session_log("s1"),
        keys.session_meta("s1"),
        keys.request("o", rid),
        keys.session_inflight("s1"),
    ]
    return k, [body, kind, index, 60, 1000, rid, 60, 0]


async def test_a_resent_log_frame_returns_the_seq_and_body_of_the_first_run(redis: Redis, prefix: str) -> None:
    """Frames whose LOG_FRAME answer was lost (the pipeline sent again after a dropped connection) must still reach
    the socket: a repeat hands back the number and the body logged the first time, for every chunk index and for the
    final frame, and logs nothing twice. Before, a repeat answered 0 (dropped), so the live client never got a
    frame that was in the log under a number it would never ask for again."""
    keys = Keys(prefix)
    log_frame = redis.register_script(LOG_FRAME)

    async def run(rid: str, body: bytes, kind: str, index: int = 0) -> list[Any]:
        k, a = _log_frame_call(keys, rid, body, kind, index)
        return list(await log_frame(keys=k, args=a))

    chunks = [await run("r1", f"chunk {i}".encode(), "chunk", i) for i in range(3)]
    other = await run("r2", b"r2 final", "final")  # another request's frame in between
    final = await run("r1", b"r1 final", "final")
    seqs = [int(c[0]) for c in [*chunks, other, final]]
    assert seqs == [1, 2, 3, 4, 5]
    assert all(len(r) == 2 for r in [*chunks, other, final]), "a new frame comes back as {seq, holder}"

    for i in (2, 0, 1):
        again = await run("r1", f"chunk {i}".encode(), "chunk", i)
        assert (int(again[0]), again[2]) == (i + 1, f"chunk {i}".encode())
    again = await run("r1", b"r1 final", "final")
    assert (int(again[0]), again[2]) == (5, b"r1 final")
    # A different final frame (a re-run's, or the gateway's deadline error) is not a second final: the logged one
    # comes back, and the gateway's first-final check keeps the socket from getting it twice.
    late = await run("r1", b"a late error", "final")
    assert (int(late[0]), late[2]) == (5, b"r1 final")
    # A new chunk index after the final frame is dropped.
    assert int((await run("r1", b"chunk 3", "chunk", 3))[0]) == 0
    assert await redis.xlen(keys.session_log("s1")) == 5, "a repeat was logged again"
    assert await redis.get(keys.session_seq("s1")) == b"5"


async def test_a_chunk_whose_request_state_is_gone_does_not_leave_a_key_without_a_ttl(
    redis: Redis, prefix: str
) -> None:
    """The request's hash expired, or was lost in a failover, while its job streamed on: the chunk makes it again,
    with the request TTL (before: none, so it stayed in Redis for good)."""
    keys = Keys(prefix)
    k, a = _log_frame_call(keys, "r1", b"chunk 0", "chunk", 0)
    assert int((await redis.eval(LOG_FRAME, len(k), *k, *a))[0]) == 1  # type: ignore[misc]
    assert 0 < await redis.ttl(keys.request("o", "r1")) <= 60


async def test_a_resume_from_a_seq_the_session_never_reached_starts_a_fresh_session(conn: Conn) -> None:
    """A last seq far above the session's numbering would become the floor for new numbers and push them past what
    the log's entry ids hold; a few above it (the increments a failover loses) still resume."""
    assert (await conn.call("sentiment", "before"))["type"] == "result"
    assert conn.session is not None
    probe = await Conn(conn.url).open(hello={"type": "hello", "session": conn.session, "last_seq": 2**53 - 1})
    assert probe.frames[0]["resumed"] is False
    fresh = await probe.call("sentiment", "in the fresh session")
    assert fresh["type"] == "result" and fresh["seq"] <= 2, fresh
    await probe.close()
    ahead = conn.last_seq + 3  # the client has frames whose numbers a failover lost
    again = await Conn(conn.url).open(hello={"type": "hello", "session": conn.session, "last_seq": ahead})
    assert again.frames[0]["resumed"] is True
    after = await again.call("sentiment", "after the resume")
    assert after["seq"] > ahead, after
    await again.close()


async def test_a_gateway_that_numbers_after_a_resume_never_numbers_below_the_clients_last_seq(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """A failover lost the counter's last increments (the client has frames up to 7, the counter says 5), and the
    client resumed on gateway B. Gateway A, still running one of the session's requests, numbers its final from the
    counter: it must get 8, not 6, or B (and the client) drop it as a frame already seen."""
    keys = Keys(prefix)
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-a"})
    await redis.set(keys.session_seq("s1"), 5)
    async with running_hub(redis_server, prefix) as b:
        resumed = await lifecycle._resume(b, RecordingConn(), "o", "s1", 7)  # type: ignore[arg-type]
        assert resumed is not None and resumed.delivered == 7
        resumed.end_replay()
    k, a = _log_frame_call(keys, "r1", b"a's final", "final", 0)  # as gateway A logs it: not holding, floor 0
    assert int((await redis.eval(LOG_FRAME, len(k), *k, *a))[0]) == 8  # type: ignore[misc]


async def _log_final(redis: Redis, keys: Keys, rid: str, label: str) -> tuple[int, bytes, bool]:
    """Log request `rid`'s result as a gateway that does not hold session s1 (floor 0): (seq, body, repeat)."""
    body = encode(Result(id=rid, output={"label": label}))
    k, a = _log_frame_call(keys, rid, body, "final", 0)
    res = await redis.eval(LOG_FRAME, len(k), *k, *a)  # type: ignore[misc]
    return int(res[0]), bytes(res[2]) if len(res) > 2 else body, len(res) > 2


def _forward(rid: str, seq: int, body: bytes, repeat: bool) -> Forward:
    return Forward(session="s1", seq=seq, frame=body.decode(), owner="o", request_id=rid, final=True, repeat=repeat)


async def _held_at_7_then_failover(b: Hub, redis: Redis, keys: Keys, socket: RecordingConn) -> Session:
    """Session s1 resumed on gateway B with its socket at 7, then a failover takes the counter back to 5; request r1,
    admitted in s1, keeps its admission."""
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-a"})
    await redis.set(keys.session_seq("s1"), 7)
    held = await lifecycle._resume(b, socket, "o", "s1", 7)  # type: ignore[arg-type]
    assert held is not None and held.delivered == 7
    held.end_replay()
    await redis.set(keys.session_seq("s1"), 5)  # the failover
    await redis.hset(keys.request("o", "r1"), "session", "s1")
    return held


async def _resumed_and_resent(b: Hub, held: Session) -> RecordingConn:
    """The client resumes s1 on B with last seq 7 on a new socket and sends r1 again; returns that socket."""
    second = RecordingConn()
    assert await lifecycle._resume(b, second, "o", "s1", 7) is held  # type: ignore[arg-type]
    await lifecycle.replay(b, held)
    again = Infer(type="infer", id="r1", task="sentiment", input="x")
    await admission.enqueue_new(b, held, again, job_for(b, held, "r1"), time.monotonic())
    return second


async def test_a_final_numbered_below_the_socket_after_a_failover_past_a_takeover_still_reaches_it(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """Gateway B holds the session (its socket has frames up to 7) when a failover loses the counter's last
    increments (it says 5). Gateway A, still running one of the session's requests, numbers its final 6 and forwards
    it to B. Numbered, the client would drop it as a frame it has; B sends it unnumbered, once. It is noted for that
    socket only: if the socket dies before writing it, the request sent again after a resume gets its stored final."""
    keys = Keys(prefix)
    first = RecordingConn()
    async with running_hub(redis_server, prefix) as b:
        held = await _held_at_7_then_failover(b, redis, keys, first)

        seq, body, repeat = await _log_final(redis, keys, "r1", "positive")
        assert (seq, repeat) == (6, False)
        relay.deliver(b, _forward("r1", seq, body, repeat))
        relay.deliver(b, _forward("r1", seq, body, repeat))  # the same forward again: still one final
        assert first.decoded() == [{"type": "result", "id": "r1", "output": {"label": "positive"}}]
        assert held.delivered == 7

        await lifecycle.detach(b, held, 1006)  # the socket died, the frame perhaps unwritten
        second = await _resumed_and_resent(b, held)
        assert second.decoded() == [{"type": "result", "id": "r1", "output": {"label": "positive"}}]


async def test_a_repeated_final_the_socket_already_had_is_not_sent_again_after_a_resume_elsewhere(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """No failover. The client got r1's final (seq 4) from gateway A, then resumed on B with last_seq 4. A second run
    of r1 (jobs run at least once) reaches A, whose log script answers it as a repeat of seq 4; A forwards it to B.
    The client has it: B sends nothing."""
    keys = Keys(prefix)
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-a"})
    await redis.set(keys.session_seq("s1"), 3)
    assert (await _log_final(redis, keys, "r1", "positive"))[0] == 4  # A's socket got it
    socket = RecordingConn()
    async with running_hub(redis_server, prefix) as b:
        held = await lifecycle._resume(b, socket, "o", "s1", 4)  # type: ignore[arg-type]
        assert held is not None
        await lifecycle.replay(b, held)
        seq, body, repeat = await _log_final(redis, keys, "r1", "negative")  # the second run's reply, at A
        assert (seq, repeat) == (4, True)
        relay.deliver(b, _forward("r1", seq, body, repeat))
        assert socket.frames == []


async def test_a_final_the_takeover_finds_numbered_below_the_socket_is_sent_unnumbered(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """The failover case met by the takeover instead of a forward: r1 is in the session's in-flight snapshot, and
    gateway A logs its final, numbered 6 from a counter the failover took back to 5, before B reads it. B sends it
    unnumbered; A's forward, coming after, is not sent a second time."""
    keys = Keys(prefix)
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-a"})
    socket = RecordingConn()
    async with running_hub(redis_server, prefix) as b:
        held = await lifecycle._resume(b, socket, "o", "s1", 7)  # type: ignore[arg-type]
        assert held is not None
        await redis.set(keys.session_seq("s1"), 5)  # the failover, after the resume raised the counter
        job = job_for(b, held, "r1").model_copy(update={"reply_to": keys.replies("gw-a")})
        await redis.hset(keys.session_inflight("s1"), "r1", encode(job))
        seq, body, repeat = await _log_final(redis, keys, "r1", "positive")  # leaves the in-flight hash
        await redis.hset(keys.session_inflight("s1"), "r1", encode(job))  # as B's snapshot, taken before, saw it
        assert (seq, repeat) == (6, False)
        await lifecycle.replay(b, held)
        relay.deliver(b, _forward("r1", seq, body, repeat))
        assert socket.decoded() == [{"type": "result", "id": "r1", "output": {"label": "positive"}}]


async def test_a_repeated_final_below_the_socket_is_not_noted_so_a_resent_request_gets_it(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """B sent r1's final unnumbered (the failover case above), and the socket died before writing it. A second run's
    final, a repeat of the same number, arrives while the session waits for a resume: not sent, and not noted, so the
    request sent again after the resume gets its stored final."""
    keys = Keys(prefix)
    first = RecordingConn()
    async with running_hub(redis_server, prefix) as b:
        held = await _held_at_7_then_failover(b, redis, keys, first)
        relay.deliver(b, _forward("r1", *await _log_final(redis, keys, "r1", "positive")))
        assert len(first.frames) == 1
        await lifecycle.detach(b, held, 1006)
        seq, body, repeat = await _log_final(redis, keys, "r1", "negative")
        assert (seq, repeat) == (6, True)
        relay.deliver(b, _forward("r1", seq, body, repeat))
        second = await _resumed_and_resent(b, held)
        assert second.decoded() == [{"type": "result", "id": "r1", "output": {"label": "positive"}}]


async def test_a_final_whose_forward_failed_is_forwarded_as_new_when_its_batch_is_read_again(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """Gateway A logs r1's final new for a session gateway B holds, and the forward fails (Redis failing over): the
    reply batch is read again, and the log script now answers a repeat. A forwards it as new, so that B sends it
    even numbered below its socket; a second run's final, after a forward that was written, goes as a repeat."""
    keys = Keys(prefix)
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-b"})
    reply = Reply(job_id="j1", request_id="r1", owner="o", session="s1", task="sentiment", kind="result", data={})
    async with running_hub(redis_server, prefix, gateway_id="gw-a") as a:
        forward = a.forward
        failing = True

        async def forward_once_failing(forwards: list[tuple[str, bytes]]) -> None:
            if failing:
                raise ConnectionError("Redis is failing over")
            await forward(forwards)

        a.forward = forward_once_failing  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await worker_replies.handle(a, [reply])
        failing = False
        await worker_replies.handle(a, [reply])  # the batch read again
        await worker_replies.handle(a, [reply])  # a second run of the job, after a forward that was written
        assert not a.finals_forwarding
    sent = [Forward.model_validate_json(f[b"m"]) for _, f in await redis.xrange(keys.replies("gw-b"))]
    assert [(f.request_id, f.seq, f.repeat) for f in sent] == [("r1", 1, False), ("r1", 1, True)]


async def test_a_final_whose_forward_failed_reaches_the_socket_when_the_session_came_to_its_gateway_meanwhile(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """As above, but before the batch is read again the client resumes on A itself (last seq 7): the final, numbered
    6 from the lowered counter, now goes to A's own socket, unnumbered, and only once."""
    keys = Keys(prefix)
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-b"})
    await redis.set(keys.session_seq("s1"), 5)  # B's socket had 7; the failover lost two increments
    reply = Reply(job_id="j1", request_id="r1", owner="o", session="s1", task="sentiment", kind="result", data={})
    socket = RecordingConn()
    async with running_hub(redis_server, prefix, gateway_id="gw-a") as a:

        async def failing(forwards: list[tuple[str, bytes]]) -> None:
            raise ConnectionError("Redis is failing over")

        a.forward = failing  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await worker_replies.handle(a, [reply])  # logged new as 6
        held = await lifecycle._resume(a, socket, "o", "s1", 7)  # type: ignore[arg-type]
        assert held is not None
        await lifecycle.replay(a, held)
        await worker_replies.handle(a, [reply])  # the batch read again: a repeat of 6, for a socket at 7
        await worker_replies.handle(a, [reply])
    assert socket.decoded() == [{"type": "result", "id": "r1", "output": {}}]


async def test_a_cancel_on_the_holder_does_not_shadow_the_final_a_failover_numbered_below_its_socket(
    redis_server: RedisHandle, redis: Redis, prefix: str
) -> None:
    """B holds the session (socket at 7) and tracks r1; after the failover A logs r1's final as 6. The client cancels
    r1 on B before A's forward arrives: B's `cancelled` is a repeat of 6 (the result came first), neither sent nor
    noted, and A's forward, logged new, then reaches the socket unnumbered."""
    keys = Keys(prefix)
    await redis.hset(keys.session_meta("s1"), mapping={"identity": "o", "gateway": "gw-a"})
    socket = RecordingConn()
    async with running_hub(redis_server, prefix) as b:
        held = await lifecycle._resume(b, socket, "o", "s1", 7)  # type: ignore[arg-type]
        assert held is not None
        held.end_replay()
        p = Pending(job=job_for(b, held, "r1"), session=held, received=time.monotonic())
        b.track(p)
        await redis.set(keys.session_seq("s1"), 5)  # the failover
        seq, body, repeat = await _log_final(redis, keys, "r1", "positive")
        assert (seq, repeat) == (6, False)
        await b.finish_locally(p, ErrorCode.CANCELLED, "cancelled by the client")
        assert socket.frames == []
        relay.deliver(b, _forward("r1", seq, body, repeat))
    assert socket.decoded() == [{"type": "result", "id": "r1", "output": {"label": "positive"}}]
