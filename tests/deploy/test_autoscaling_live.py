"""Autoscaling, live: the KEDA ScaledObjects' prometheus queries, as rendered (deploy/values/kind.yaml, the values the
kind profile installs), evaluated by a real Prometheus scraping a running gateway and worker, rise under load and
fall after it; the HPA algorithm (tests/deploy/hpa_sim.py) applied to those readings gives the replica counts the
cluster would choose, printed and asserted.

- The gateway and worker run as the rendered pods do (tests/deploy/local_service.py: rendered env, only the listen
  port, bind address, Redis address and volume paths changed).
- Prometheus (/usr/bin/prometheus, loopback, the observability harness's helpers) scrapes them the way the Prometheus
  Operator would from the rendered ServiceMonitors: job and `service` = the Service the ServiceMonitor selects,
  `namespace` from its namespaceSelector, `endpoint` = its port name, `pod`/`container` from the Deployment. Only
  the interval is shortened (15 s -> 1 s) to fit the test in a minute. The queries are used verbatim.
- Thresholds: the gateway's connectionsPerPod (500) and inflightPerPod (off) are lowered to 10 through --set so a
  few dozen sockets cross them; the query text is asserted identical to the kind.yaml rendering. The worker's
  thresholds are the shipped ones (20 jobs per replica, oldest job 5 s).
- Load: 40 WebSockets held open; the worker paused (SIGSTOP) while 100 requests are sent, so a backlog builds and
  ages; then SIGCONT, every request answered, sockets closed.
- The HPA fallback (autoscaling.mode=hpa) scales on CPU from metrics-server, not on a Prometheus query: its metric is
  sampled from /proc/<pid>/stat (what cAdvisor reads from the cgroup) against the rendered CPU request, and the
  replica counts it would give are printed, not asserted (2 shared cores make CPU readings noisy).
- The simulation replays readings of one replica (open loop): more replicas would lower per-pod metrics (connections
  spread, backlog drains faster), which is what brings the cluster back down in reality.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.deploy.autoscaling_stack import KIND, CpuSampler, instant, query_range, running_stack
from tests.deploy.hpa_sim import ScaledTarget, Step, Trigger, simulate, table
from tests.deploy.local_service import LocalService
from tests.deploy.render import REPO_ROOT, find, render_chart

sys.path.insert(0, str(REPO_ROOT / "tests" / "observability"))
from obs_support import PROMETHEUS

pytestmark = pytest.mark.skipif(
    not (os.access(PROMETHEUS, os.X_OK) and shutil.which("redis-server")), reason="needs prometheus and redis-server"
)

SET_VALUES: dict[str, dict[str, Any]] = {
    "gateway": {"autoscaling.keda.connectionsPerPod": 10, "autoscaling.keda.inflightPerPod": 10},
    "inference-worker": {},
}
FROM_ZERO: dict[str, dict[str, Any]] = {
    "gateway": {"gateway.queueWhenNoWorkers": True},
    "inference-worker": {"autoscaling.minReplicas": 0},
}
"""Workers that scale to zero: the gateway queues requests for a task with no live worker, so a backlog can build."""
QUEUED = 30
CONNECTIONS = 40
REQUESTS = 100
PAUSE_S = 7.0  # below the gateway's admission age limit (10 s) and the worker registration TTL (10 s)


# ------------------------------------------------------------------------------------------------ load


async def drive_load(ws_url: str, worker: LocalService, marks: dict[str, float]) -> Counter[str]:
    finals: dict[str, dict[str, Any]] = {}
    done = asyncio.Event()
    conns = []

    async def reader(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                f = json.loads(raw)
                if f.get("type") in ("result", "error") and f.get("id"):
                    finals[f["id"]] = f
                    if len(finals) >= REQUESTS:
                        done.set()

    for _ in range(CONNECTIONS):
        ws = await websockets.connect(ws_url, open_timeout=10, max_size=None)
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
        conns.append(ws)
    readers = [asyncio.create_task(reader(ws)) for ws in conns]
    marks["connections open"] = time.time()
    await asyncio.sleep(3)
    worker.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    marks["worker paused"] = time.time()
    try:
        for i in range(REQUESTS):
            frame = {"type": "infer", "id": f"r{i}", "task": "sentiment", "input": f"request {i}: I love it"}
            await conns[i % CONNECTIONS].send(json.dumps(frame))
        await asyncio.sleep(PAUSE_S)
    finally:
        worker.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    marks["worker resumed"] = time.time()
    await asyncio.wait_for(done.wait(), 30)
    marks["all answered"] = time.time()
    await asyncio.sleep(3)
    for ws in conns:
        await ws.close()
    await asyncio.gather(*readers)
    marks["connections closed"] = time.time()
    return Counter(f.get("code") or f["type"] for f in finals.values())


# ------------------------------------------------------------------------------------------------ the test


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_stack(tmp_path, SET_VALUES) as out:
        yield out


@pytest.fixture
def from_zero_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with running_stack(tmp_path, FROM_ZERO) as out:
        yield out


def _window(readings: dict[float, float | None], start: float, end: float) -> list[float]:
    return [v or 0.0 for t, v in readings.items() if start <= t <= end]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_keda_queries_follow_load_and_replicas_follow_them(stack: dict[str, Any]) -> None:
    t_start = float(int(time.time()))  # whole seconds: the readings are evaluated on this grid
    url = stack["prometheus"]
    _, gw_target, gw = stack["gateway"]
    _, wk_target, wk = stack["inference-worker"]
    targets = {"gateway": gw_target, "inference-worker": wk_target}
    queries = {(chart, tr.name): tr.query for chart, t in targets.items() for tr in t.triggers}

    cpu = {chart: CpuSampler(svc.pid, _cpu_request(svc)) for chart, svc in (("gateway", gw), ("inference-worker", wk))}
    for s in cpu.values():
        s.start()
    time.sleep(3)  # baseline
    marks: dict[str, float] = {"start": t_start}
    ws_url = gw.url(gw.view.port("http"), "/v1/ws").replace("http://", "ws://")
    outcomes = asyncio.run(drive_load(ws_url, wk, marks))
    assert outcomes == Counter({"result": REQUESTS}), outcomes

    # after the load: wait until every query reads 0 again, then two more scrapes
    deadline = time.time() + 15
    while time.time() < deadline and any(instant(url, q) > 0 for q in queries.values()):
        time.sleep(0.5)
    time.sleep(2)
    t_end = time.time()
    for s in cpu.values():
        s.stop_event.set()

    readings = {key: query_range(url, q, t_start, t_end) for key, q in queries.items()}
    load_start, load_end = marks["connections open"], marks["connections closed"]
    print(f"\nphases (s from start): {', '.join(f'{k} {v - t_start:.1f}' for k, v in marks.items())}")
    for (chart, name), values in readings.items():
        before = _window(values, t_start, load_start - 1)
        during = _window(values, load_start, load_end)
        after = _window(values, t_end - 2, t_end)
        print(f"{chart}/{name}: before max {max(before):g}, during max {max(during):g}, after {after}")
        assert max(before) == 0, f"{chart}/{name} not idle before the load"
        assert max(during) > 0, f"{chart}/{name} did not rise under load"
        assert max(after) == 0, f"{chart}/{name} did not fall after the load"

    peak = {k: max(_window(s, load_start, load_end)) for k, s in readings.items()}
    assert peak[("gateway", "connections")] == CONNECTIONS
    assert peak[("gateway", "inflight")] >= REQUESTS * 0.9
    assert peak[("inference-worker", "backlog")] >= REQUESTS * 0.9
    assert peak[("inference-worker", "oldest-age")] >= wk_target.triggers[1].threshold

    # --- what the cluster would do: one HPA sync per reading, then the last reading held to show scale-down
    for chart, target in targets.items():
        series = {name: readings[(chart, name)] for name in (tr.name for tr in target.triggers)}
        times = sorted(next(iter(series.values())))
        recorded = [(t, {n: s[t] for n, s in series.items()}) for t in times]
        steps = simulate(target, recorded)
        print(table(target, steps, t_start))
        expected_peak = min(
            target.max_replicas,
            max(_formula(tr, peak[(chart, tr.name)]) for tr in target.triggers),
        )
        assert steps[0].replicas == target.min_replicas
        assert max(s.replicas for s in steps) == expected_peak >= 2, f"{chart}: expected a scale-up"
        assert steps[-1].recommendation == target.min_replicas, f"{chart}: the formula falls back to min after load"
        # within the scale-down stabilization window the cluster keeps the peak (longer than this recording)
        window = float(target.scale_down["stabilizationWindowSeconds"])
        assert window > t_end - load_end
        assert steps[-1].replicas == expected_peak
        tail = _projection(target, steps, recorded[-1][1])
        print("after the recording, last reading held:", _replica_changes(tail, t_start, steps[-1].replicas))
        assert tail[-1].replicas == target.min_replicas
        first_down = next(s for s in tail if s.replicas < expected_peak)
        last_high = max(s.t for s in steps if s.recommendation == expected_peak)
        assert first_down.t - last_high >= window, "scaled down before the stabilization window passed"

    # --- HPA fallback (mode hpa): CPU utilisation against the rendered request, printed only
    for chart, sampler in cpu.items():
        hpa_docs = render_chart(chart, KIND, {"autoscaling.mode": "hpa"})
        (hpa,) = find(hpa_docs, "HorizontalPodAutoscaler")
        (metric,) = hpa["spec"]["metrics"]
        target_util = metric["resource"]["target"]["averageUtilization"] / 100
        cpu_target = ScaledTarget(
            f"{chart} (hpa, cpu)",
            int(hpa["spec"]["minReplicas"]),
            int(hpa["spec"]["maxReplicas"]),
            (Trigger("cpu", "container cpu / request", "Value", target_util),),
        )
        steps = simulate(cpu_target, [(t, {"cpu": u}) for t, u in sampler.samples])
        peak_cpu = max((u for _, u in sampler.samples), default=0.0)
        changes = _replica_changes(steps, t_start, cpu_target.min_replicas)
        print(
            f"{cpu_target.name}: peak {peak_cpu:.0%} of the CPU request, target {target_util:.0%}, replicas {changes}"
        )


async def queue_then_serve(
    ws_url: str, prometheus: str, backlog_query: str, scale_up: Any, marks: dict[str, float]
) -> Counter[str]:
    """QUEUED requests while no worker runs: every one must be accepted (not refused `unavailable`) and show in the
    backlog query; then `scale_up` starts a worker, which must answer them all."""
    finals: dict[str, dict[str, Any]] = {}
    accepted: set[str] = set()
    conns = [await websockets.connect(ws_url, open_timeout=10, max_size=None) for _ in range(3)]

    async def reader(ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                f = json.loads(raw)
                if f.get("type") == "accepted":
                    accepted.add(f["id"])
                elif f.get("type") in ("result", "error") and f.get("id"):
                    finals[f["id"]] = f

    for ws in conns:
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
    readers = [asyncio.create_task(reader(ws)) for ws in conns]
    for i in range(QUEUED):
        frame = {"type": "infer", "id": f"q{i}", "task": "sentiment", "input": f"queued {i}: I love it"}
        await conns[i % len(conns)].send(json.dumps(frame))
    deadline = time.time() + 10
    while len(accepted) + len(finals) < QUEUED and time.time() < deadline:
        await asyncio.sleep(0.05)
    assert not finals, f"answered with no worker running: {list(finals.values())[:3]}"
    assert len(accepted) == QUEUED
    marks["queued"] = time.time()
    while await asyncio.to_thread(instant, prometheus, backlog_query) < QUEUED:
        assert time.time() < deadline + 10, "the backlog never reached the autoscaler's query"
        await asyncio.sleep(0.5)
    marks["backlog seen"] = time.time()
    await asyncio.to_thread(scale_up)
    marks["worker started"] = time.time()
    deadline = time.time() + 30
    while len(finals) < QUEUED and time.time() < deadline:
        await asyncio.sleep(0.05)
    marks["all answered"] = time.time()
    for ws in conns:
        await ws.close()
    await asyncio.gather(*readers)
    return Counter(f.get("code") or f["type"] for f in finals.values())


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_workers_scale_from_zero_on_the_queue_the_gateways_export(from_zero_stack: dict[str, Any]) -> None:
    """minReplicas 0: the last worker stops, requests wait in the queue, the rendered backlog query reads them
    (KEDA's activation), the simulated cluster goes from 0 to 1 replica on those readings, the started worker
    answers every request, and the readings fall back to what scales to zero again."""
    stack = from_zero_stack
    url = stack["prometheus"]
    _, _, gw = stack["gateway"]
    _, target, wk = stack["inference-worker"]
    assert target.min_replicas == 0
    (backlog,) = [tr for tr in target.triggers if tr.name == "backlog"]
    code, _ = wk.terminate(15)  # KEDA scales the idle workers to zero: the last one drains and deregisters
    assert code == 0, wk.tail()
    marks: dict[str, float] = {"scaled to zero": time.time()}
    tasks_url = gw.url(gw.view.port("http"), "/v1/tasks")
    deadline = time.time() + 10
    while [(t["task"], t["workers"]) for t in httpx.get(tasks_url, timeout=5).json()["tasks"]] != [("sentiment", 0)]:
        assert time.time() < deadline, httpx.get(tasks_url, timeout=5).text  # listed, with no live worker
        time.sleep(0.2)
    time.sleep(3)  # idle readings at zero replicas

    def scale_up() -> None:
        new = LocalService(wk.spec, wk.view, wk.root.parent / "scaled-up", redis_addrs=stack["redis_addrs"],
                           pod_name=f"{wk.view.workload}-1")  # fmt: skip
        stack["services"].append(new)
        new.start()
        new.wait_probe("readiness", 45)

    ws_url = gw.url(gw.view.port("http"), "/v1/ws").replace("http://", "ws://")
    outcomes = asyncio.run(queue_then_serve(ws_url, url, backlog.query, scale_up, marks))
    assert outcomes == Counter({"result": QUEUED}), outcomes
    deadline = time.time() + 15
    while instant(url, backlog.query) > 0:
        assert time.time() < deadline, "the backlog query did not fall after the drain"
        time.sleep(0.5)
    time.sleep(2)
    t0, t_end = float(int(marks["scaled to zero"])) + 1, time.time()
    series = {tr.name: query_range(url, tr.query, t0, t_end) for tr in target.triggers}
    recorded = [(t, {n: v[t] for n, v in series.items()}) for t in sorted(series["backlog"])]
    steps = simulate(target, recorded, start_replicas=0)
    print(f"\nphases (s from zero): {', '.join(f'{k} {v - t0:.1f}' for k, v in marks.items())}")
    print(table(target, steps, t0))
    assert max(v or 0 for v in series["backlog"].values()) == QUEUED
    idle = [s for s in steps if s.t < marks["queued"] - 1]
    assert idle and all(s.replicas == 0 for s in idle), "a replica before any request was queued"
    first_up = next(s for s in steps if s.replicas > 0)
    assert first_up.replicas == _formula(backlog, QUEUED)  # KEDA activates 0 -> 1, the HPA goes on from there
    assert first_up.t <= marks["backlog seen"] + 1, "the readings would not have started a worker"
    assert steps[-1].recommendation == 0, "the drained queue does not let the workers scale to zero again"


def _cpu_request(svc: LocalService) -> float:
    container = next(c for c in svc.view.pod_spec["containers"] if c["name"] == svc.view.name)
    raw = str(container["resources"]["requests"]["cpu"])
    return float(raw[:-1]) / 1000 if raw.endswith("m") else float(raw)


def _formula(tr: Trigger, value: float) -> int:
    """The replicas one trigger asks for at a reading, from one replica: ceil(value / threshold) for AverageValue
    (total / per-replica target) and for Value (1 x value / target) alike."""
    return math.ceil(value / tr.threshold)


def _projection(target: ScaledTarget, steps: list[Step], last: dict[str, float | None]) -> list[Step]:
    """Continue the simulation past the recording with the last (idle) reading every 15 s (the HPA sync period)."""
    t_last = steps[-1].t
    horizon = float(target.scale_down["stabilizationWindowSeconds"]) + 60 * target.max_replicas + 60
    extra = [(t_last + 15 * i, dict(last)) for i in range(1, int(horizon / 15) + 1)]
    replay = [(s.t, s.values) for s in steps] + extra
    return simulate(target, replay)[len(steps) :]


def _replica_changes(steps: list[Step], t0: float, start: int | None = None) -> str:
    out: list[str] = []
    prev = start
    for s in steps:
        if s.replicas != prev:
            out.append(f"t={s.t - t0:.0f}s: {s.replicas}")
            prev = s.replicas
    return ", ".join(out) if out else f"stays at {start}"
