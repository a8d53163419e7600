"""Chaos on real processes over a real Sentinel topology. Every scenario must end with 0 requests without a final
frame and 0 duplicate final frames. The only errors allowed are the ones a fault documents (`unavailable` while Redis
cannot take the request, `overloaded` past the backlog limit): a request that merely timed out (`deadline_exceeded`) or
failed would be work the system lost. Every scenario must also recover: 20 results in a row after the fault (after
its end, for the outage).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from typing import Any

import httpx
import psutil
import pytest
import websockets

from tests.support import procs
from tests.support.chaos import LoadDriver
from tests.support.sentinel import SentinelTopology
from tests.support.slow_client import slow_reader_socket

FAST_RECLAIM = {"RECLAIM_IDLE_MS": "1000", "MAX_BATCH_DELAY_MS": "5"}


def ws(g: procs.Service) -> str:
    return f"ws://127.0.0.1:{g.port}/v1/ws"


ALLOWED_ERRORS = {"unavailable", "overloaded"}


def assert_clean(report: dict[str, Any]) -> None:
    assert report["lost"] == 0, report
    assert report["duplicates"] == 0, report
    assert report["results"] > 0, report
    assert set(report["errors"]) <= ALLOWED_ERRORS, report
    assert report["recover_s"] is not None, report


@pytest.mark.timeout(120)
async def test_worker_sigkill_mid_batch(
    topology: SentinelTopology, prefix: str, services: list[procs.Service], record: Any
) -> None:
    env = topology.env()
    slow = {"RTAI_TEST_SLOW_MS": "30", **FAST_RECLAIM}
    workers = [
        procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", **slow).start() for _ in range(2)
    ]
    services.extend(workers)
    g = procs.gateway(env, prefix).start()
    services.append(g)
    driver = LoadDriver([ws(g)], connections=20, rate=150)
    await driver.start()
    load = asyncio.create_task(driver.drive(12))
    fault_at = None
    for _ in range(3):
        await asyncio.sleep(3)
        victim = workers.pop(0)
        fault_at = fault_at or time.monotonic()
        victim.kill()  # SIGKILL mid-batch: its pending jobs must be reclaimed by the survivor
        # Started off the event loop: the load goes on while the new worker boots.
        fresh = await asyncio.to_thread(
            procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", **slow).start
        )
        services.append(fresh)
        workers.append(fresh)
    await load
    await driver.settle(20)
    await driver.stop()
    report = record(driver.report("worker SIGKILL x3", fault_at))
    assert_clean(report)
    # Killed workers took their counters with them: count the takeovers in every worker's log instead.
    all_workers = [s for s in services if s.name == "worker"]
    reclaimed = sum(
        json.loads(line).get("count", 0)
        for w in all_workers
        for line in w.logs().splitlines()
        if '"jobs.reclaimed"' in line
    )
    assert reclaimed >= 1, "no job was reclaimed from a killed worker"
    report["reclaimed"] = reclaimed


@pytest.mark.timeout(120)
async def test_redis_master_sigkill_failover(
    topology: SentinelTopology, prefix: str, services: list[procs.Service], record: Any
) -> None:
    env = topology.env()
    services.append(procs.worker(env, prefix, **FAST_RECLAIM).start())
    g = procs.gateway(env, prefix).start()
    services.append(g)
    driver = LoadDriver([ws(g)], connections=20, rate=200)
    await driver.start()
    load = asyncio.create_task(driver.drive(14))
    await asyncio.sleep(3)
    old = topology.master_port()
    fault_at = time.monotonic()
    unready: list[int | str] = []
    readiness = asyncio.create_task(_watch_readiness(g, unready))
    topology.master().kill()
    await asyncio.to_thread(topology.wait_new_master, old)
    await load
    await driver.settle(25)
    await driver.stop()
    assert not readiness.done(), f"the readiness watcher stopped: {readiness}"
    readiness.cancel()
    report = record(driver.report("redis master SIGKILL", fault_at))
    report.update(readiness_failures=len(unready))
    assert_clean(report)
    # A failover is shorter than `unready_after_redis_down_s`: the gateway stays in rotation and answers its
    # clients `unavailable` meanwhile, rather than leave an ingress with no ready gateway to send new sockets to.
    assert not unready, f"readiness failed during the failover: {unready[:5]}; {report}"
    assert httpx.get(f"{g.base}/readyz").status_code == 200


async def _watch_readiness(g: procs.Service, failures: list[int | str]) -> None:
    """Poll the gateway's /readyz every 0.2 s until cancelled, keeping each answer that is not 200 (and each probe
    that got no answer)."""
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            try:
                status = (await http.get(f"{g.base}/readyz")).status_code
                if status != 200:
                    failures.append(status)
            except httpx.HTTPError as e:
                failures.append(repr(e))
            await asyncio.sleep(0.2)


@pytest.mark.timeout(120)
async def test_gateway_restart_clients_resume(
    topology: SentinelTopology, prefix: str, services: list[procs.Service], record: Any
) -> None:
    env = topology.env()
    services.append(
        procs.worker(env, prefix, tasks="sentiment=tests.support.fake_models:slow", RTAI_TEST_SLOW_MS="20").start()
    )
    a = procs.gateway(env, prefix, DRAIN_S="1").start()
    b = procs.gateway(env, prefix, DRAIN_S="1").start()
    services.extend([a, b])
    driver = LoadDriver([ws(a), ws(b)], connections=20, rate=150)
    await driver.start()
    load = asyncio.create_task(driver.drive(12))
    await asyncio.sleep(3)
    fault_at = time.monotonic()
    a.signal(signal.SIGTERM)  # drains, closes sockets with 1012; clients move to b and resume
    await asyncio.to_thread(a.proc.wait, 30)  # type: ignore[union-attr]
    a2 = await asyncio.to_thread(procs.gateway(env, prefix, DRAIN_S="1").start)
    services.append(a2)
    await asyncio.sleep(2)
    b.signal(signal.SIGTERM)
    await asyncio.to_thread(b.proc.wait, 30)  # type: ignore[union-attr]
    driver.urls[:] = [ws(a2)]
    await load
    await driver.settle(20)
    await driver.stop()
    report = record(driver.report("gateway SIGTERM restart", fault_at))
    assert_clean(report)
    assert report["resumed"] > 0, "no client resumed its session"
    assert report["close_codes"].get(1012, 0) > 0, "draining gateways must close sockets with 1012 (service restart)"


@pytest.mark.timeout(150)
async def test_all_redis_nodes_down_for_ten_seconds(
    topology: SentinelTopology, prefix: str, services: list[procs.Service], record: Any
) -> None:
    env = topology.env()
    services.append(procs.worker(env, prefix, **FAST_RECLAIM).start())
    # Out of rotation after 3 s without Redis (30 s by default, to ride out a failover): the outage is 10 s.
    g = procs.gateway(env, prefix, UNREADY_AFTER_REDIS_DOWN_S="3").start()
    services.append(g)
    driver = LoadDriver([ws(g)], connections=10, rate=100, deadline_ms=60_000)
    await driver.start()
    load = asyncio.create_task(driver.drive(22))
    await asyncio.sleep(3)
    fault_at = time.monotonic()
    # Stops, starts and probes run off the event loop: the load (and the clients' reading) goes on meanwhile.
    # SIGTERM: Redis flushes its append-only file, as a pod's redis would on shutdown.
    await asyncio.to_thread(topology.shutdown)
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=5) as http:
        while (await http.get(f"{g.base}/readyz")).status_code != 503:
            assert time.monotonic() - t0 < 10, "readiness stayed green while Redis was down"
            await asyncio.sleep(0.1)
    await asyncio.sleep(10)
    await asyncio.to_thread(topology.restart)
    back_at = time.monotonic()
    await load
    await driver.settle(40)
    await driver.stop()
    report = record(driver.report("all Redis nodes down 10 s", fault_at, fault_end=back_at))
    assert_clean(report)
    assert report["errors"].get("unavailable", 0) > 0, "requests during the outage should be refused as unavailable"
    assert httpx.get(f"{g.base}/readyz").status_code == 200


@pytest.mark.timeout(120)
async def test_slow_reader_and_flood_under_load(
    redis_server_for_chaos: str, prefix: str, services: list[procs.Service], record: Any
) -> None:
    env = procs.redis_env_for_url(redis_server_for_chaos)
    services.append(procs.worker(env, prefix).start())
    limits = {
        "ADMISSION__MAX_BACKLOG": "50",
        "LIMITS__MESSAGES_PER_S": "100000",
        "LIMITS__MESSAGE_BURST": "100000",
        "LIMITS__MAX_INFLIGHT_PER_USER": "100000",
        "ADMISSION__MAX_INFLIGHT_PER_CONNECTION": "100000",
    }
    g = procs.gateway(env, prefix, **limits).start()
    services.append(g)
    rss_before = psutil.Process(g.pid).memory_info().rss
    driver = LoadDriver([ws(g)], connections=20, rate=150)
    await driver.start()
    load = asyncio.create_task(driver.drive(10))
    await asyncio.sleep(2)
    fault_at = time.monotonic()
    (slow_closed, slow_how), flood_codes = await asyncio.gather(_slow_reader(g), _flood(g, 4000))
    await load
    await driver.settle(20)
    await driver.stop()
    report = record(driver.report("slow reader + flood past backlog", fault_at))
    rss_growth_mb = (psutil.Process(g.pid).memory_info().rss - rss_before) / 2**20
    report.update(
        slow_reader_close=slow_closed,
        slow_reader=slow_how,
        flood=dict(flood_codes),
        gateway_rss_growth_mb=round(rss_growth_mb, 1),
    )
    assert_clean(report)
    assert slow_closed == 1013, f"slow reader: {slow_how}; {report}"
    assert flood_codes["overloaded"] > 0, report
    assert rss_growth_mb < 100, report


async def _slow_reader(g: procs.Service) -> tuple[int | None, str]:
    """A client that sends and does not read until the gateway gives up on it: the gateway must close it (1013), not
    buffer for it. Returns the close code it then reads (None if none) and how its socket ended."""
    began = time.monotonic()
    sent = read = 0
    sock = slow_reader_socket(g.port)
    async with websockets.connect(ws(g), sock=sock, max_size=None, max_queue=1) as c, httpx.AsyncClient() as http:
        await c.send(json.dumps({"type": "hello"}))
        # Long ids make long refusals: the gateway's socket buffers (4 MB on Linux's defaults) fill sooner.
        for i in range(100_000):
            try:
                await c.send(json.dumps({"type": "infer", "id": f"slow{i:0>100}", "task": "sentiment", "input": "y"}))
            except websockets.ConnectionClosed:
                break
            sent += 1
            if i % 500 == 499:
                await asyncio.sleep(0.005)
                if "rtai_gateway_slow_client_closes_total 1.0" in (await http.get(f"{g.base}/metrics")).text:
                    break
        try:
            for _ in range(200_000):
                await asyncio.wait_for(c.recv(), 5)
                read += 1
            how = "still open"
        except websockets.ConnectionClosed as e:
            how = repr(e)
        except TimeoutError:
            how = "nothing to read for 5 s"
        rcvd = c.protocol.close_rcvd  # before leaving the block: our own close would be answered with a close frame
    code = rcvd.code if rcvd is not None else None
    return code, f"{how}; {sent} frames sent, {read} read, {time.monotonic() - began:.1f} s"


async def _flood(g: procs.Service, n: int, window: int = 500) -> Counter[str]:
    """Far more requests than the backlog admits (up to `window` outstanding), as fast as the answers come back:
    refused with `overloaded`, never queued without bound."""
    codes: Counter[str] = Counter()
    async with websockets.connect(ws(g), max_size=None) as c:
        await c.send(json.dumps({"type": "hello"}))
        sent = finals = 0
        while finals < n:
            while sent < n and sent - finals < window:
                await c.send(json.dumps({"type": "infer", "id": f"f{sent}", "task": "sentiment", "input": "flood"}))
                sent += 1
            f = json.loads(await asyncio.wait_for(c.recv(), 30))
            if f["type"] in ("result", "error"):
                finals += 1
                codes["ok" if f["type"] == "result" else f["code"]] += 1
    return codes
