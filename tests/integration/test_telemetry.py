"""One trace per request across processes, and request ids + trace ids on every request log line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from tests.support import procs
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn


def read_spans(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_one_trace_follows_a_request_through_gateway_and_worker(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service], tmp_path: Path
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    w_spans, g_spans = tmp_path / "worker.jsonl", tmp_path / "gateway.jsonl"
    services.append(procs.worker(env, prefix, RTAI_TRACE_FILE=str(w_spans), LOG_LEVEL="debug").start())
    g = procs.gateway(env, prefix, RTAI_TRACE_FILE=str(g_spans), LOG_LEVEL="debug").start()
    services.append(g)
    c = await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open()
    final = await c.call("sentiment", "trace me, I am happy")
    assert final["type"] == "result"
    await c.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        spans = read_spans(w_spans) + read_spans(g_spans)
        if any(s["name"] == "gateway.ws.send" for s in spans):
            break
        time.sleep(0.1)
    by_name = {
        s["name"]: s for s in spans if s.get("attributes", {}).get("rtai.request_id", final["id"]) == final["id"]
    }  # type: ignore[union-attr]
    for name in (
        "gateway.ws.receive",
        "transport.publish",
        "worker.job",
        "worker.infer",
        "gateway.ws.send",
        "worker.batch",
    ):
        assert name in by_name, f"missing span {name}; got {sorted(by_name)}"
    receive, publish, job, infer, send, batch = (
        by_name[n]
        for n in (
            "gateway.ws.receive",
            "transport.publish",
            "worker.job",
            "worker.infer",
            "gateway.ws.send",
            "worker.batch",
        )
    )
    trace_id = receive["trace_id"]
    assert {s["trace_id"] for s in (publish, job, infer, send)} == {trace_id}, "the request's spans are not one trace"
    assert receive["parent_id"] is None, spans
    assert publish["parent_id"] == receive["span_id"]
    assert job["parent_id"] == publish["span_id"], "the worker's span does not continue the gateway's"
    assert infer["parent_id"] == job["span_id"]
    assert send["parent_id"] == job["span_id"]
    assert publish["span_id"] in batch["links"], "the batch span does not link to the request it served"
    assert receive["service"] == "rtai-gateway" and job["service"] == "rtai-worker"

    # Logs: every line about this request names it and its trace.
    lines = [
        json.loads(ln) for svc in services for ln in svc.logs().splitlines() if final["id"] in ln and ln.startswith("{")
    ]
    assert {ln["event"] for ln in lines} >= {"request.accepted", "request.finished", "job.done"}
    for ln in lines:
        assert ln.get("request_id") == final["id"], ln
        assert ln["trace_id"] == trace_id


def test_metrics_endpoints_answer_with_the_documented_families(stack: tuple[procs.Service, procs.Service]) -> None:
    gateway, worker = stack
    g = httpx.get(f"{gateway.base}/metrics").text
    w = httpx.get(f"{worker.base}/metrics").text
    for name in (
        "rtai_gateway_connections",
        "rtai_gateway_request_duration_seconds_bucket",
        "rtai_queue_length",
        "rtai_redis_up",
    ):
        assert name in g, name
    for name in ("rtai_worker_batch_size_bucket", "rtai_worker_queue_wait_seconds_bucket", "rtai_queue_workers"):
        assert name in w, name
