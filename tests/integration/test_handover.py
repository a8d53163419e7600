"""A session that moves between gateways: frames another gateway numbered reach the socket in order, and the
gateway a session left does not cancel the work the session took with it."""

from __future__ import annotations

import redis as redis_sync

from rtai_gateway.lifecycle import anonymous_identity
from rtai_protocol import Result, encode
from rtai_transport import Keys
from rtai_transport.lua import LOG_FRAME
from tests.support import procs
from tests.support.fake_models import LONG_TEXT, TOKENS_TASK
from tests.support.procs import start, ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn


def log_as_another_gateway(redis_url: str, prefix: str, session: str, request_id: str) -> int:
    """Number and log a final frame for `session` the way a gateway that ran the request does (LOG_FRAME), without
    forwarding it: what the holder sees when that gateway dies between the two, or when its forward is still on the
    way while the holder numbers newer frames. Returns the frame's seq."""
    k = Keys(prefix)
    owner = anonymous_identity(session)
    body = encode(Result(id=request_id, output={"label": "positive", "score": 0.9}))
    r = redis_sync.Redis.from_url(redis_url)
    try:
        keys = [
            k.session_seq(session),
            k.session_log(session),
            k.session_meta(session),
            k.request(owner, request_id),
            k.session_inflight(session),
        ]
        res = r.eval(LOG_FRAME, len(keys), *keys, body, "final", 0, 600, 2000, request_id, 600, 0)
    finally:
        r.close()
    return int(res[0])


async def test_a_frame_another_gateway_numbered_reaches_the_socket_before_newer_ones(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    g, _ = procs.vader_stack(redis_server.url, prefix, services)
    c = await Conn(ws_url(g)).open()
    assert (await c.call("sentiment", "a fine day"))["type"] == "result"
    assert c.session is not None
    seq = log_as_another_gateway(redis_server.url, prefix, c.session, "ran-elsewhere")
    assert seq == c.last_seq + 1
    # The next request's frames are numbered after it: the socket must get the missing one first, or never (the
    # client drops what is not above its last seq, and a resume starts above it).
    assert (await c.call("sentiment", "a dreadful day"))["type"] == "result"
    numbered = [f for f in c.frames if f.get("seq") is not None]
    assert [f["seq"] for f in numbered] == list(range(1, len(numbered) + 1)), numbered
    elsewhere = [f for f in numbered if f.get("id") == "ran-elsewhere"]
    assert [(f["type"], f["seq"]) for f in elsewhere] == [("result", seq)]
    await c.close()


async def test_the_gateway_a_session_left_does_not_cancel_its_work_when_the_grace_runs_out(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    start(services, procs.worker(env, prefix, tasks=TOKENS_TASK, RTAI_TEST_TOKEN_MS="100"))  # 40 chunks: ~4 s
    grace = {"SESSIONS__DETACH_GRACE_S": "0.5"}  # far shorter than the stream
    a = start(services, procs.gateway(env, prefix, **grace))
    b = start(services, procs.gateway(env, prefix, **grace))
    c1 = await Conn(ws_url(a)).open()
    rid = await c1.infer("generate", LONG_TEXT, stream=True)
    await c1.wait_for(lambda f: f["type"] == "chunk" and f.get("id") == rid, 10)
    session, last_seq = c1.session, c1.last_seq
    c1.ws.transport.abort()  # the network drops: `a` keeps the session for its grace, then lets go of it
    c2 = await Conn(ws_url(b)).open(hello={"type": "hello", "session": session, "last_seq": last_seq})
    assert c2.frames[0]["resumed"] is True
    final = await c2.final(rid, timeout=20)
    assert final["type"] == "result", final
    chunks = [f["index"] for f in c1.by_id[rid] + c2.by_id[rid] if f["type"] == "chunk"]
    assert chunks == list(range(40)), chunks
    await c2.close()
