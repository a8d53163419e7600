"""Dynamic batching from the distributed queue: batches form under concurrent load, results reach their requests."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.support import procs
from tests.support.redis_server import RedisHandle
from tests.support.ws_client import Conn

TEXTS = {
    "I love it, wonderful": "positive",
    "This is awful and sad": "negative",
    "The table is made of wood": "neutral",
}


def histogram(text: str, name: str) -> tuple[float, float]:
    count = float(re.search(rf"^{name}_count{{[^}}]*}} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = float(re.search(rf"^{name}_sum{{[^}}]*}} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return count, total


async def test_batches_form_under_load_and_results_stay_with_their_requests(
    redis_server: RedisHandle, prefix: str, services: list[procs.Service]
) -> None:
    env = procs.redis_env_for_url(redis_server.url)
    # 40 ms per model call: while one batch runs, the next requests pile up and are read together.
    w = procs.worker(
        env, prefix, tasks="sentiment=tests.support.fake_models:slow", RTAI_TEST_SLOW_MS="40", MAX_BATCH_SIZE="16"
    )
    services.append(w.start())
    g = procs.gateway(env, prefix).start()
    services.append(g)
    conns = [await Conn(f"ws://127.0.0.1:{g.port}/v1/ws").open() for _ in range(8)]
    texts = list(TEXTS)
    sent = []
    for i in range(96):
        c = conns[i % len(conns)]
        text = texts[i % len(texts)]
        sent.append((c, await c.infer("sentiment", f"{text} #{i}"), TEXTS[text]))
    for c, rid, label in sent:
        f = await c.final(rid, timeout=30)
        assert f["type"] == "result"
        assert f["output"]["label"] == label
        assert all(x["id"] == rid for x in c.finals(rid))
    calls, jobs = histogram(httpx.get(f"{w.base}/metrics").text, "rtai_worker_batch_size")
    assert jobs >= 96
    assert jobs / calls > 2, f"batches did not form: {jobs} jobs in {calls} model calls"
    await asyncio.gather(*(c.close() for c in conns))
