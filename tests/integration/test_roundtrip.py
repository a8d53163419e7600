"""The core pipeline end to end: real sockets, real Redis, real worker processes."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import httpx
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from tests.support import procs
from tests.support.procs import ws_url
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

TEXTS = [
    "I love this so much!",
    "This is terrible and I hate it.",
    "The box is brown.",
    "Great job, well done :)",
    "worst day ever",
]


def expected_labels() -> dict[str, str]:
    analyzer = SentimentIntensityAnalyzer()
    out = {}
    for t in TEXTS:
        c = analyzer.polarity_scores(t)["compound"]
        out[t] = "positive" if c >= 0.05 else "negative" if c <= -0.05 else "neutral"
    return out


async def test_ten_connections_hundred_requests_each(stack: tuple[procs.Service, procs.Service]) -> None:
    gateway, _ = stack
    labels = expected_labels()
    conns = [await Conn(ws_url(gateway)).open() for _ in range(10)]

    async def drive(i: int, c: Conn) -> dict[str, str]:
        sent = {}
        for j in range(100):
            text = TEXTS[(i + j) % len(TEXTS)]
            rid = await c.infer("sentiment", text, rid=f"c{i}-{j}")
            sent[rid] = text
        for rid in sent:
            await c.final(rid, timeout=30)
        return sent

    sent_by_conn = await asyncio.gather(*(drive(i, c) for i, c in enumerate(conns)))
    for i, (c, sent) in enumerate(zip(conns, sent_by_conn, strict=True)):
        finals = [f for f in c.frames if f["type"] in ("result", "error")]
        # Exactly the requests this socket sent, each once, each with the right answer.
        assert sorted(f["id"] for f in finals) == sorted(sent), (
            f"connection {i} got someone else's or duplicate results"
        )
        for f in finals:
            assert f["type"] == "result", f
            assert f["output"]["label"] == labels[sent[f["id"]]]
        seqs = [f["seq"] for f in c.frames if f.get("seq") is not None]
        assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)), "frames out of order or repeated"
    for c in conns:
        await c.close()


async def test_two_workers_process_each_request_exactly_once(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], tmp_path: Path
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    extra = {"RTAI_TEST_COUNT_DIR": str(tmp_path), "MAX_BATCH_DELAY_MS": "5"}
    for _ in range(2):
        services.append(
            procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:counting", **extra).start()
        )
    g = procs.gateway(env, prefix).start()
    services.append(g)
    conns = [await Conn(ws_url(g)).open() for _ in range(8)]
    rids = []
    for j in range(60):
        for i, c in enumerate(conns):
            rid = f"x{i}-{j}"
            await c.infer("sentiment", f"{rid} is good", rid=rid)
            rids.append((c, rid))
    results = [await c.final(rid, timeout=30) for c, rid in rids]
    assert all(r["type"] == "result" for r in results)
    calls: collections.Counter[str] = collections.Counter()
    per_worker = []
    for f in tmp_path.glob("*.txt"):
        lines = f.read_text().splitlines()
        per_worker.append(len(lines))
        calls.update(line.split(" ", 1)[0] for line in lines if not line.startswith("warming"))
    assert len(calls) == len(rids), "some requests were never run"
    assert set(calls.values()) == {1}, f"requests run more than once: {[k for k, v in calls.items() if v > 1][:5]}"
    assert len(per_worker) == 2 and min(per_worker) > 1, f"load not shared: {per_worker}"
    for c in conns:
        await c.close()


async def test_bad_frames_get_documented_errors_and_the_connection_stays_usable(
    stack: tuple[procs.Service, procs.Service],
) -> None:
    gateway, _ = stack
    c = await Conn(ws_url(gateway)).open()
    cases = [
        ("{not json", None, "invalid_request"),
        ('{"type": "infer", "id": "w1", "task": "sentiment", "input": 42}', "w1", "invalid_request"),
        ('{"type": "infer", "id": "u1", "task": "sentiment", "input": "hi", "colour": "red"}', "u1", "invalid_request"),
        ('{"type": "infer", "id": "l1", "task": "sentiment", "input": "' + "a" * 6000 + '"}', "l1", "invalid_request"),
        ('{"type": "infer", "id": "t1", "task": "no-such-task", "input": "hi"}', "t1", "unknown_task"),
        ('{"type": "launch", "id": "m1"}', "m1", "invalid_request"),
        ("[1, 2, 3]", None, "invalid_request"),
    ]
    for raw, rid, code in cases:
        before = len(c.frames)
        await c.send(raw)
        err = await c.wait_for(lambda f, n=before: f["type"] == "error" and c.frames.index(f) >= n, 5)
        assert err["code"] == code, (raw[:60], err)
        assert err.get("id") == rid
        assert err["message"]
        ok = await c.call("sentiment", "I am happy")
        assert ok["type"] == "result" and ok["output"]["label"] == "positive"
    await c.close()


async def test_thousand_idle_connections_do_not_stop_active_ones(stack: tuple[procs.Service, procs.Service]) -> None:
    gateway, _ = stack
    idle = []
    for _ in range(20):
        idle += await asyncio.gather(*(Conn(ws_url(gateway)).open() for _ in range(50)))
    assert len(idle) == 1000
    active = [await Conn(ws_url(gateway)).open() for _ in range(5)]
    results = await asyncio.gather(
        *(c.call("sentiment", f"good {i} {j}") for i, c in enumerate(active) for j in range(20))
    )
    assert all(r["type"] == "result" for r in results)
    metrics = httpx.get(f"{gateway.base}/metrics").text
    assert "rtai_gateway_connections 1005.0" in metrics
    assert all(not c.by_id for c in idle), "an idle socket received someone else's frames"
    await asyncio.gather(*(c.close() for c in idle + active))


def test_tasks_endpoint_lists_the_workers_task(stack: tuple[procs.Service, procs.Service]) -> None:
    gateway, _ = stack
    tasks = httpx.get(f"{gateway.base}/v1/tasks").json()["tasks"]
    assert [(t["task"], t["model"], t["workers"]) for t in tasks] == [("sentiment", "vader", 1)]
