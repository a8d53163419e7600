"""Failures and interleavings around sessions that move between gateways, on a real Redis and a real Hub: a failed
re-submission is tried again, a final logged here reaches the gateway that holds the session now (a failed forward
too), a gateway that let go of a session lets go of the requests it only relayed, SUBMIT does not run again a request
whose admission a failover lost, the reaper honours a grace that began while it asked Redis, and a request admitted
while its session ended cleanly is cancelled. Each interleaving is forced by a wrapper around one awaited call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from rtai_gateway import admission, lifecycle
from rtai_gateway.hub import Hub
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_protocol import ErrorCode, Infer, Reply, encode
from rtai_protocol.codec import decode_internal
from rtai_protocol.internal import Forward
from tests.support.hub_harness import RecordingConn, job_for, running_hub, track
from tests.support.redis_server import RedisHandle


@pytest.fixture
async def hub(redis_server: RedisHandle, prefix: str) -> AsyncIterator[Hub]:
    async with running_hub(redis_server, prefix, sessions={"detach_grace_s": 0.05}) as h:
        yield h


def _session(hub: Hub, sid: str) -> Session:
    session = Session(id=sid, identity=f"anon:{sid}", conn=RecordingConn(), fill_gap=hub.gap_filler)  # type: ignore[arg-type]
    hub.sessions[session.id] = session
    return session


def _failing_once(real: Any) -> Any:
    """`real`, except that its first call fails as a dropped connection does."""
    calls = 0

    async def call(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("connection dropped")
        return await real(*a, **kw)

    return call


async def _forwarded(hub: Hub, gateway: str) -> list[Forward]:
    out = []
    entries: Any = await hub.redis.xrange(hub.keys.replies(gateway))
    for _, fields in entries:
        msg = decode_internal(fields[b"m"])
        assert isinstance(msg, Forward)
        out.append(msg)
    return out


class _Catalog:
    """What `admission.enqueue_new` asks of the catalog."""

    def note_enqueued(self, task: str) -> None:
        pass

    def mark_unreachable(self) -> None:
        pass


async def test_a_takeover_whose_resubmission_failed_is_adopted_at_the_next_heartbeat(hub: Hub) -> None:
    """Request R's gateway is gone; re-submitting its job fails (a Redis blip). Before: R was already marked as
    running for this gateway, so no later pass sent it again, and it ended only at its deadline."""
    session = _session(hub, "s1")
    job = job_for(hub, session, "r1").model_copy(update={"reply_to": hub.keys.replies("gw-dead")})
    p = Pending(job=job, session=session, received=time.monotonic())
    hub.track(p)
    hub.redis.xadd = _failing_once(hub.redis.xadd)  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError):
        await lifecycle.adopt_orphans(hub)  # the heartbeat's step fails; its loop tries again
    assert p.job.reply_to == hub.keys.replies("gw-dead") and p.job.attempt == 1
    await lifecycle.adopt_orphans(hub)
    await lifecycle.adopt_orphans(hub)  # sent once: it runs for this gateway now
    entries: Any = await hub.redis.xrange(hub.keys.jobs("sentiment"))
    (entry,) = entries
    assert p.entry_id == entry[0].decode()
    assert (p.job.reply_to, p.job.attempt) == (hub.reply_stream, 2)


async def test_a_resumed_request_whose_resubmission_failed_is_adopted_at_the_next_heartbeat(hub: Hub) -> None:
    """As above, when the session is resumed here and its request's gateway is found gone: the replay fails with the
    re-submission, and the request, still tracked, is adopted by the heartbeat."""
    session = _session(hub, "s12")
    job = job_for(hub, session, "r1").model_copy(update={"reply_to": hub.keys.replies("gw-dead")})
    await hub.redis.hset(hub.keys.session_inflight(session.id), "r1", encode(job))
    hub.redis.xadd = _failing_once(hub.redis.xadd)  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError):
        await lifecycle._take_over_inflight(hub, session)
    p = hub.pending[(session.identity, "r1")]
    assert p.job.reply_to == hub.keys.replies("gw-dead")
    await lifecycle.adopt_orphans(hub)
    assert p.job.reply_to == hub.reply_stream
    assert await hub.redis.xlen(hub.keys.jobs("sentiment")) == 1


async def test_a_job_resubmit_all_failed_to_send_is_sent_by_the_heartbeat(hub: Hub) -> None:
    """The Redis node changed and one of the re-submissions failed. Before: only logged (this runs once per node
    change), and the job, maybe lost with the old node, was never sent again."""
    session = _session(hub, "s2")
    first, second = track(hub, session, "r1"), track(hub, session, "r2")
    hub.redis.xadd = _failing_once(hub.redis.xadd)  # type: ignore[method-assign]
    await lifecycle.resubmit_all(hub)
    assert (first.job.attempt, second.job.attempt) == (1, 2)
    assert await hub.redis.xlen(hub.keys.jobs("sentiment")) == 1
    await lifecycle.adopt_orphans(hub)
    await lifecycle.adopt_orphans(hub)
    assert (first.job.attempt, second.job.attempt) == (2, 2)
    assert await hub.redis.xlen(hub.keys.jobs("sentiment")) == 2
    assert not first.resend_due


async def test_a_final_ended_here_reaches_the_gateway_that_took_the_session_over(hub: Hub) -> None:
    """This gateway runs request R; the client resumed its session on gateway B while this one cancelled R (its grace
    had run out). Before: R's `cancelled` final was logged naming B as the holder, and forwarded nowhere: B tracked R
    and its client waited until R's deadline."""
    session = _session(hub, "s3")
    p = track(hub, session, "r1")
    session.conn = None
    await hub.redis.hset(hub.keys.session_meta("s3"), mapping={"identity": "anon:s3", "gateway": "gw-b"})
    await asyncio.wait_for(lifecycle.end_session(hub, session), 5)
    assert p.key not in hub.pending
    (told,) = await _forwarded(hub, "gw-b")
    assert told.final and (told.session, told.request_id) == ("s3", "r1") and '"cancelled"' in told.frame


async def test_a_final_whose_forward_failed_is_forwarded_when_read_again(hub: Hub) -> None:
    """This gateway runs R; its session is detached here (in its grace) and gateway B holds it now. R's result is
    logged, and forwarding it to B fails: the reply reader reads the batch again. Before: the first pass had noted the
    final as sent to this session's socket (which it never was), and the repeat was neither sent nor forwarded."""
    session = _session(hub, "s5")
    track(hub, session, "r1")
    session.conn = None
    await hub.redis.hset(hub.keys.session_meta("s5"), mapping={"identity": "anon:s5", "gateway": "gw-b"})
    reply = Reply(
        job_id="j-r1", request_id="r1", owner="anon:s5", session="s5", task="sentiment", kind="result", data=1
    )
    hub.forward = _failing_once(hub.forward)  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError):
        await hub.handle_replies([reply])
    await hub.handle_replies([reply])  # the reader's second read of the same entries
    (told,) = await _forwarded(hub, "gw-b")
    assert told.final and told.request_id == "r1" and told.seq == 1


async def test_a_session_let_go_of_takes_the_requests_it_only_relayed(hub: Hub) -> None:
    """This gateway took session s4 over from gateway A (alive; request R's replies go there); the client moved on
    to gateway C. Before: this gateway let go of the session but tracked R until its deadline (A forwards R's final
    to C, never here): it held the drain, counted R `deadline_exceeded`, and would have re-run R had A died."""
    session = _session(hub, "s4")
    await hub.redis.set(hub.keys.gateway_alive("gw-a"), b"1", ex=30)
    job = job_for(hub, session, "r1").model_copy(update={"reply_to": hub.keys.replies("gw-a")})
    relayed = Pending(job=job, session=session, received=time.monotonic())
    hub.track(relayed)
    own = track(hub, session, "r2")  # runs for this gateway: its replies are forwarded from here
    await hub.redis.hset(hub.keys.session_meta("s4"), mapping={"identity": "anon:s4", "gateway": "gw-c"})
    await lifecycle.detach(hub, session, 1006)
    await asyncio.sleep(0.1)  # past the grace
    await lifecycle.reap(hub)
    assert "s4" not in hub.sessions
    assert relayed.key not in hub.pending
    assert own.key in hub.pending
    assert not await hub.redis.exists(hub.keys.session_log("s4")), "let go of, not ended: nothing logged"


async def _submit(hub: Hub, session: Session, rid: str) -> Any:
    k, s = hub.keys, hub.settings.sessions
    job = job_for(hub, session, rid)
    keys = [
        k.request(session.identity, rid),
        k.jobs("sentiment"),
        k.session_inflight(session.id),
        k.session_seq(session.id),
        k.session_log(session.id),
    ]
    args: list[Any] = [encode(job), session.id, rid, s.request_ttl_s, s.jobs_maxlen, s.ttl_s, b"{}", s.log_maxlen, 0]
    return await hub.submit_script(keys=keys, args=args)


async def test_submit_does_not_run_again_a_request_whose_admission_a_failover_lost(hub: Hub) -> None:
    """A failover lost SUBMIT's writes; the job, sent again by its gateway, runs, and its chunk is logged on the new
    master (LOG_FRAME makes the request's state again, without its session). Before: the client's resend was admitted
    as new: a second job, and the chunk numbering reset to 0."""
    session = _session(hub, "s6")
    got: list[Any] = []
    chunk = b'{"type":"chunk","id":"r1","index":0,"data":"x"}'
    await hub.session_log.append(session, "s6", "anon:s6", "r1", chunk, "chunk", 0, got.append)
    assert int(got[0][0]) == 1
    res = await _submit(hub, session, "r1")
    assert res == [b"inflight", b"", b"0", b""]
    state: Any = await hub.redis.hgetall(hub.keys.request("anon:s6", "r1"))
    assert state[b"next"] == b"1" and b"session" not in state
    assert await hub.redis.xlen(hub.keys.jobs("sentiment")) == 0
    # The hub sends nothing for it (no `accepted`, no refusal), and tracks nothing new.
    hub.catalog = _Catalog()  # type: ignore[assignment]
    conn: Any = session.conn  # a RecordingConn
    req = Infer(type="infer", id="r1", task="sentiment", input="x")
    await asyncio.wait_for(admission.enqueue_new(hub, session, req, job_for(hub, session, "r1"), time.monotonic()), 5)
    assert conn.frames == [] and not hub.pending


async def test_submit_answers_a_finished_request_whose_admission_a_failover_lost_with_its_final(hub: Hub) -> None:
    session = _session(hub, "s7")
    final = b'{"type":"result","id":"r1","output":1}'
    await hub.session_log.append(session, "s7", "anon:s7", "r1", final, "final", 0, lambda _: None)
    res = await _submit(hub, session, "r1")
    assert res == [b"done", final, b""]
    assert await hub.redis.xlen(hub.keys.jobs("sentiment")) == 0
    hub.catalog = _Catalog()  # type: ignore[assignment]
    conn: Any = session.conn  # a RecordingConn
    req = Infer(type="infer", id="r1", task="sentiment", input="x")
    await asyncio.wait_for(admission.enqueue_new(hub, session, req, job_for(hub, session, "r1"), time.monotonic()), 5)
    assert conn.frames == [final], "the stored final, unnumbered"
    session.finals["r1"] = None  # as if this session's socket got it already: not sent a second time
    await asyncio.wait_for(admission.enqueue_new(hub, session, req, job_for(hub, session, "r1"), time.monotonic()), 5)
    assert conn.frames == [final]


async def test_a_session_detached_again_while_the_reaper_asks_redis_keeps_its_new_grace(hub: Hub) -> None:
    """The reaper finds s8's grace over and asks Redis who holds it; meanwhile the client resumes here and drops
    again: a new grace begins. Before: the reaper ended the session on the strength of the old one."""
    session = _session(hub, "s8")
    p = track(hub, session, "r1")
    await hub.redis.hset(hub.keys.session_meta("s8"), mapping={"identity": "anon:s8", "gateway": hub.gateway_id})
    await lifecycle.detach(hub, session, 1006)
    await asyncio.sleep(0.1)  # past the grace (0.05 s)
    hget = hub.redis.hget

    async def resumed_and_dropped_meanwhile(*a: Any, **kw: Any) -> Any:
        res = await hget(*a, **kw)
        session.conn = RecordingConn()  # type: ignore[assignment]  # as lifecycle._resume does
        hub.detached.pop(session.id, None)
        await lifecycle.detach(hub, session, 1006)
        return res

    hub.redis.hget = resumed_and_dropped_meanwhile  # type: ignore[method-assign]
    try:
        await lifecycle.reap(hub)
    finally:
        del hub.redis.hget
    assert p.key in hub.pending
    assert hub.detached.get("s8") is session
    await asyncio.sleep(0.1)  # the new grace runs out
    await lifecycle.reap(hub)
    assert p.key not in hub.pending


async def test_a_request_admitted_while_its_session_closes_cleanly_is_cancelled(hub: Hub) -> None:
    """The fair scheduler submits a request of a session whose client closes cleanly (1000) during SUBMIT's round
    trip: the session ends before the request is tracked. Before: it ran to completion, though a clean close cancels
    the session's unfinished requests."""
    session = _session(hub, "s9")
    hub.catalog = _Catalog()  # type: ignore[assignment]
    submit = hub.framelog.submit

    def closed_meanwhile(*a: Any, **kw: Any) -> Any:
        done = submit(*a, **kw)
        asyncio.get_running_loop().create_task(lifecycle.detach(hub, session, 1000))
        return done

    hub.framelog.submit = closed_meanwhile  # type: ignore[method-assign]
    req = Infer(type="infer", id="r1", task="sentiment", input="x")
    job = job_for(hub, session, "r1")
    await asyncio.wait_for(admission.enqueue_new(hub, session, req, job, time.monotonic()), 5)
    assert "s9" not in hub.sessions
    assert not hub.pending
    assert await hub.redis.exists(hub.keys.cancelled(job.job_id))
    state: Any = await hub.redis.hgetall(hub.keys.request("anon:s9", "r1"))
    assert b'"cancelled"' in state[b"final"]


async def test_a_request_admitted_while_its_session_ends_is_cancelled_with_the_others(hub: Hub) -> None:
    """As above, with the session's end still cancelling its other requests when the new one is tracked."""
    session = _session(hub, "s10")
    hub.catalog = _Catalog()  # type: ignore[assignment]
    first = track(hub, session, "r1")
    finish = hub.finish_locally
    job = job_for(hub, session, "r2")

    async def admitted_meanwhile(p: Pending, code: ErrorCode, message: str) -> None:
        if p is first:
            req = Infer(type="infer", id="r2", task="sentiment", input="x")
            await admission.enqueue_new(hub, session, req, job, time.monotonic())
        await finish(p, code, message)

    hub.finish_locally = admitted_meanwhile  # type: ignore[method-assign]
    await asyncio.wait_for(lifecycle.detach(hub, session, 1000), 5)
    assert not hub.pending
    assert await hub.redis.exists(hub.keys.cancelled(job.job_id))
    assert "s10" not in hub.sessions


async def test_a_final_ended_here_for_a_detached_session_is_not_noted_as_sent(hub: Hub) -> None:
    """A request ended here (its deadline) while its session is detached here: the final is in the log for the
    replay, and a resend of its id after a resume here is answered with it."""
    session = _session(hub, "s11")
    p = track(hub, session, "r1")
    session.conn = None
    await hub.finish_locally(p, ErrorCode.DEADLINE_EXCEEDED, "late")
    assert "r1" not in session.finals
