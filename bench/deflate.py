"""What permessage-deflate costs the gateway, measured with a client that offers it as browsers do.

    python bench/deflate.py [--idle 1000] [--requests 2000] [--rounds 2]

For each round, a fresh gateway with `limits.per_message_deflate` off (the default) and one with it on, on one Redis
and one VADER worker: gateway RSS per idle socket (`--idle` sockets that said hello, RSS delta / sockets), then CPU
per request and mean latency over a closed loop of `--requests` on one socket. The client is the `websockets` library
(it offers permessage-deflate by default); rtai's own load generator does not compress, so `make bench` cannot show
this cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
import scenarios as sc
import stack as st
import websockets

from rtai_client.report import text_table

TEXT = "I love this product, it works great and the battery lasts all day"


async def _hello(url: str) -> Any:
    ws = await websockets.connect(url, compression="deflate", max_size=2**20)
    await ws.send(json.dumps({"type": "hello"}))
    await ws.recv()
    return ws


async def measure(url: str, gateway: psutil.Process, idle: int, requests: int) -> dict[str, Any]:
    before = gateway.memory_info().rss
    sockets = [await _hello(url) for _ in range(idle)]
    await asyncio.sleep(1.0)
    per_socket_kb = (gateway.memory_info().rss - before) / idle / 1024
    extension = sockets[0].response.headers.get("Sec-WebSocket-Extensions") if sockets else None
    for ws in sockets:
        await ws.close()
    ws = await _hello(url)
    cpu0, t0 = sum(gateway.cpu_times()[:2]), time.perf_counter()
    for i in range(requests):
        await ws.send(json.dumps({"type": "infer", "id": f"r{i}", "task": "sentiment", "input": TEXT}))
        while json.loads(await ws.recv())["type"] not in ("result", "error"):
            pass
    cpu, wall = sum(gateway.cpu_times()[:2]) - cpu0, time.perf_counter() - t0
    await ws.close()
    return {
        "negotiated": bool(extension),
        "KB per idle socket": round(per_socket_kb, 1),
        "gateway us/req": round(cpu / requests * 1e6),
        "mean ms/req": round(wall / requests * 1000, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"off (default)": [], "on": []}
    with st.Stack(Path(tempfile.mkdtemp(prefix="rtai-deflate-"))) as s:
        redis = s.start(st.redis())
        url = f"redis://127.0.0.1:{redis.port}/0"
        prefix = f"deflate{uuid.uuid4().hex[:6]}"
        s.start(st.worker(url, prefix))
        for i in range(args.rounds):
            for name in list(runs) if i % 2 == 0 else reversed(list(runs)):
                env = {**sc.GATEWAY_ENV, "RTAI_GW_LIMITS__PER_MESSAGE_DEFLATE": str(name == "on").lower()}
                gw = s.start(st.gateway(url, prefix, **env))
                try:
                    ws_url = f"ws://127.0.0.1:{gw.port}/v1/ws"
                    row = asyncio.run(measure(ws_url, psutil.Process(gw.pid), args.idle, args.requests))
                finally:
                    s.stop(gw)
                runs[name].append(row)
                print(name, row, flush=True)
    rows = [
        {"deflate": name, **{k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "negotiated"}}
        for name, rs in runs.items()
    ]
    print(text_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
