"""What is kept for resume and retries is bounded in time and in size, as configured."""

from __future__ import annotations

import asyncio

import redis as redis_sync

from tests.support import procs
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

TTL_S, REQUEST_TTL_S, LOG_MAXLEN = 40, 20, 16
REQUESTS = 300
# The log trims with MAXLEN ~ (whole stream nodes, 100 entries each by default): cheap, and at most a node over.
NODE = 100


async def test_session_log_and_request_state_are_bounded(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    settings = {
        "SESSIONS__TTL_S": str(TTL_S),
        "SESSIONS__REQUEST_TTL_S": str(REQUEST_TTL_S),
        "DEADLINES__MAX_MS": "15000",  # a request's state must outlive its deadline
        "DEADLINES__DEFAULT_MS": "15000",
        "SESSIONS__LOG_MAXLEN": str(LOG_MAXLEN),
        "LIMITS__MESSAGES_PER_S": "10000",
        "LIMITS__MESSAGE_BURST": "10000",
    }
    g, _ = procs.vader_stack(redis_server.url, prefix, services, **settings)
    c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
    for i in range(REQUESTS):
        assert (await c.call("sentiment", f"kept for a while {i}"))["type"] == "result"
    r = redis_sync.Redis.from_url(redis_server.url)
    root = f"{prefix}:v1"
    log = f"{root}:session:{{{c.session}}}:log"
    assert int(r.get(f"{root}:session:{{{c.session}}}:seq") or 0) >= 2 * REQUESTS  # accepted + result each
    assert r.xlen(log) <= LOG_MAXLEN + NODE, r.xlen(log)
    for key in (log, f"{root}:session:{{{c.session}}}:seq", f"{root}:session:{{{c.session}}}:meta"):
        assert 0 < r.ttl(key) <= TTL_S, key
    requests = list(r.scan_iter(match=f"{root}:req:*", count=1000))
    assert len(requests) == REQUESTS
    assert all(0 < r.ttl(k) <= REQUEST_TTL_S for k in requests)
    await c.close()


async def test_a_request_whose_final_was_trimmed_from_the_log_is_answered_when_sent_again(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    """A client away long enough for its session log to trim a final frame it never got: the resume replays what is
    left, the client sends the request again (same id, as the protocol says), and gets the stored final frame,
    unnumbered (before: nothing, in the same session, so the request never ended for the client). A request whose
    final the replay sent gets nothing more."""
    settings = {
        "SESSIONS__LOG_MAXLEN": str(LOG_MAXLEN),
        "LIMITS__MESSAGES_PER_S": "10000",
        "LIMITS__MESSAGE_BURST": "10000",
    }
    g, _ = procs.vader_stack(redis_server.url, prefix, services, **settings)
    c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
    await c.call("sentiment", "before")
    seen = c.last_seq
    lost = await c.call("sentiment", "I love this", rid="lost")  # as if this final never reached the client
    assert lost["type"] == "result"
    for i in range(150):  # 300 frames: the log keeps about LOG_MAXLEN + one stream node
        last = await c.call("sentiment", f"meanwhile {i}")
    await c.ws.close()
    r = await Conn(c.url).open(hello={"type": "hello", "session": c.session, "last_seq": seen})
    assert r.frames[0]["resumed"] is True
    await asyncio.sleep(0.5)  # the replay
    assert not r.finals("lost"), "the final is still in the log: the test needs more frames after it"
    await r.infer("sentiment", "I love this", rid="lost")
    again = await r.final("lost", timeout=5)
    assert (again["type"], again.get("seq"), again["output"]) == ("result", None, lost["output"])
    # One whose final the replay did send is not answered twice: one final per request.
    assert len(r.finals(last["id"])) == 1
    await r.infer("sentiment", f"meanwhile {149}", rid=last["id"])
    await asyncio.sleep(0.5)
    assert len(r.finals(last["id"])) == 1, r.finals(last["id"])
    await r.close()
