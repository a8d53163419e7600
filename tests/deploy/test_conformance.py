"""Chart-vs-code conformance: the gateway and inference-worker charts, rendered with their default values (Sentinel)
and with deploy/values/standalone.yaml, run as local processes with exactly the env, command and args the pods would
get, and answer on the rendered probe ports and paths; a request then flows end to end over the gateway's WebSocket.

What is changed from the rendering (see tests/deploy/local_service.py, printed by each test with `-s`):
- ports: ONLY the env var that sets the listen port (RTAI_GW_PORT, RTAI_WORKER_HTTP_PORT) is changed, to a free
  loopback port, after checking its rendered value equals the rendered containerPort the probes name;
- the bind address 0.0.0.0 becomes 127.0.0.1 (RTAI_GW_HOST, RTAI_WORKER_HTTP_HOST);
- Redis addresses become loopback ports: by default every address in RTAI_*_REDIS__SENTINELS must be a pod DNS name
  the rendered Redis chart serves, and its Sentinel topology runs locally from that chart (RedisChartPods); with
  standalone.yaml the URL names a standalone Redis, run as a plain redis-server;
- secrets: secretKeyRefs are resolved from the rendered Redis chart's own Secret (its name and key must exist there),
  with the password set to a test value; volume mount paths (/tmp, the model cache) become local folders.

An env var that the chart (or the image) sets with a service's prefix but that its settings class does not read fails
the test: pydantic-settings would ignore it silently, even with extra="forbid".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from websockets.sync.client import connect

from tests.deploy.dockerfile import image_spec
from tests.deploy.local_service import (
    IMAGE_PYTHON,
    SERVICES,
    LocalService,
    map_redis_url,
    redis_chart_addrs,
    termination_budget,
    unknown_settings_env,
)
from tests.deploy.redis_pods import RedisChartPods
from tests.deploy.render import VALUES_DIR, ContainerView, container_view, render_chart
from tests.support.ports import free_port
from tests.support.redis_server import RedisProcess

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

PASSWORD = "conformance-test-password"
SCENARIOS = {"default": (), "standalone": (VALUES_DIR / "standalone.yaml",)}
# How long the test waits for a probe at most; the rendered startup budget (period x failureThreshold) is larger
# and is checked to be at least this.
PROBE_WAIT_S = 45.0


def rendered(chart: str, values: tuple[Path, ...], set_values: dict[str, Any] | None = None) -> ContainerView:
    spec = SERVICES[chart]
    return container_view(render_chart(chart, values, set_values), "Deployment", spec.container)


def env_problems(chart: str, view: ContainerView) -> list[str]:
    """Env var names (image ENV + container env) with the service's prefix that its settings class does not read."""
    spec = SERVICES[chart]
    names = {*image_spec(spec.dockerfile).env, *view.env, *view.env_refs}
    return unknown_settings_env(names, spec)


# ------------------------------------------------------------------------------------------------ static checks


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("chart", SERVICES)
def test_rendered_container_matches_the_service(chart: str, scenario: str) -> None:
    view = rendered(chart, SCENARIOS[scenario])
    assert env_problems(chart, view) == [], f"{chart}/{scenario}: env vars the settings class does not read"
    image = image_spec(SERVICES[chart].dockerfile)
    assert not view.command, "the chart must not override the image ENTRYPOINT"
    assert image.entrypoint[0] == "/app/.venv/bin/python"
    assert set(view.probes) == {"startup", "liveness", "readiness"}
    for kind, probe in view.probes.items():
        assert probe.path in ("/healthz", "/readyz"), f"{kind}: {probe.path}"
        assert probe.port in view.ports.values(), f"{kind} probe port {probe.port} is not a container port"
    startup = view.probes["startup"].spec
    assert startup["periodSeconds"] * startup["failureThreshold"] >= PROBE_WAIT_S


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chart", SERVICES)
def test_an_env_var_the_settings_do_not_know_fails(chart: str) -> None:
    """The check above is live: a chart that sets a misspelt/renamed setting is caught (here through extraEnv)."""
    prefix = SERVICES[chart].prefix
    bogus = f"{prefix}REDIS__SENTINEL"  # singular: a plausible typo of REDIS__SENTINELS
    view = rendered(chart, (), {"extraEnv": [{"name": bogus, "value": "redis-0.redis-headless:26379"}]})
    assert env_problems(chart, view) == [bogus]


# ------------------------------------------------------------------------------------------------ the running pods


@dataclass
class RedisTopology:
    addrs: dict[str, str]
    secrets: dict[tuple[str, str], str]
    describe: str


@pytest.fixture
def redis_for(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisTopology]:
    scenario: str = request.param
    if scenario == "default":
        docs = render_chart("redis", set_values={"auth.password": PASSWORD})
        pods = RedisChartPods(docs, tmp_path / "redis")
        try:
            for i in range(pods.replicas):
                pods.start_pod(i)
            addrs = redis_chart_addrs(docs, pods.redis_ports, pods.sentinel_ports)
            yield RedisTopology(
                addrs, pods.secrets, f"redis chart: {pods.replicas} pods, sentinels {pods.sentinel_ports}"
            )
        finally:
            pods.stop_all()
    else:
        # standalone.yaml names `redis://redis:6379/0`: a standalone Redis reachable as `redis` (not the rtai redis
        # chart, whose `redis` Service serves Sentinel only). A plain redis-server stands in for it.
        server = RedisProcess(free_port()).start()
        try:
            yield RedisTopology(
                {"redis:6379": f"127.0.0.1:{server.port}"}, {}, f"standalone redis-server :{server.port}"
            )
        finally:
            server.stop()


def _frames_until(ws: Any, pred: Any, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    frames: list[dict[str, Any]] = []
    while True:
        frame = json.loads(ws.recv(timeout=max(0.05, deadline - time.monotonic())))
        frames.append(frame)
        if pred(frame):
            return frames


def request_end_to_end(gateway: LocalService, http_port: int) -> dict[str, Any]:
    """hello -> welcome, then one sentiment request -> its result frame (retrying `unavailable` for the moment the
    gateway takes to read the worker's registration)."""
    url = gateway.url(http_port, "/v1/ws").replace("http://", "ws://")
    with connect(url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello"}))
        first = _frames_until(ws, lambda f: True, 10)[0]
        assert first["type"] == "welcome", first
        for attempt in range(20):
            rid = f"c{attempt + 1}" if attempt else "c1"
            ws.send(json.dumps({"type": "infer", "id": rid, "task": "sentiment", "input": "I love it"}))
            frames = _frames_until(ws, lambda f, r=rid: f.get("id") == r and f["type"] in ("result", "error"), 20)
            final = frames[-1]
            if final["type"] == "error" and final.get("code") == "unavailable":
                time.sleep(0.25)
                continue
            return final
    raise AssertionError("gateway kept answering `unavailable`")


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("redis_for", list(SCENARIOS), indirect=True, ids=list(SCENARIOS))
def test_charts_run_as_rendered(redis_for: RedisTopology, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    scenario = request.node.callspec.id
    values = SCENARIOS[scenario]
    services: dict[str, LocalService] = {}
    for chart in ("inference-worker", "gateway"):  # worker first: the gateway answers `unavailable` without one
        view = rendered(chart, values)
        assert env_problems(chart, view) == [], f"{chart}: env vars its settings class does not read"
        services[chart] = LocalService(
            SERVICES[chart], view, tmp_path / chart, secrets=redis_for.secrets, redis_addrs=redis_for.addrs
        )
    print(f"\n[{scenario}] {redis_for.describe}")
    for svc in services.values():
        print(svc.describe())
        # exactly the documented overrides, nothing else
        assert {o.why for o in svc.overrides} <= {
            "free loopback port",
            "loopback only",
            "sentinel pod addresses -> loopback",
            "redis address -> loopback",
            "path in a volume mount -> local folder",
            "image venv -> this venv, base image PATH -> this PATH",
        }
    timings: dict[str, float] = {}
    try:
        for chart, svc in services.items():
            t0 = time.monotonic()
            svc.start()
            # the kubelet's order: startup until it passes, then liveness and readiness
            timings[f"{chart} startup"] = svc.wait_probe("startup", PROBE_WAIT_S)
            assert svc.probe("liveness") == 200, svc.tail()
            svc.wait_probe("readiness", PROBE_WAIT_S)
            timings[f"{chart} ready"] = time.monotonic() - t0
            for kind, probe in svc.view.probes.items():
                assert svc.probe(kind) == 200, f"{chart} {kind} {probe.path} on :{probe.port}"
            # /metrics answers on the container port (what the ServiceMonitor scrapes)
            metrics = svc.url(next(iter(svc.local_ports)), "/metrics")
            assert httpx.get(metrics, timeout=5).status_code == 200

        gw = services["gateway"]
        final = request_end_to_end(gw, gw.view.port("http"))
        assert final["type"] == "result", final
        assert final["id"] == "c1"
        print(f"[{scenario}] result: {json.dumps(final)[:200]}")

        # SIGTERM: each process exits 0 before the kubelet would SIGKILL it (grace minus the preStop sleep)
        for chart in ("gateway", "inference-worker"):
            svc = services[chart]
            budget = termination_budget(svc.view)
            code, took = svc.terminate(budget)
            timings[f"{chart} stop"] = took
            # uvicorn re-raises the SIGTERM it handled once shut down (Kubernetes records 143): a clean stop is exit 0
            # or that, with the service's own shutdown event logged, and before the kubelet's SIGKILL
            assert code in (0, -signal.SIGTERM), f"{chart}: {code} after SIGTERM (budget {budget:.0f}s):\n{svc.tail()}"
            assert svc.stopped_cleanly(), f"{chart} did not log {svc.spec.stopped_event}:\n{svc.tail()}"
        print(f"[{scenario}] " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    except BaseException:
        for svc in services.values():
            print(svc.tail())
        raise
    finally:
        for svc in services.values():
            svc.terminate(5)


@pytest.mark.timeout(90)
def test_the_declare_job_runs_as_rendered(tmp_path: Path) -> None:
    """The worker chart's hook Job (workers at zero), run as its pod would run it: the image's entrypoint with the
    Job's args and env (Redis mapped to a local server, the venv to this one) records the configured tasks."""
    spec = SERVICES["inference-worker"]
    docs = render_chart(
        "inference-worker",
        (VALUES_DIR / "standalone.yaml",),
        {
            "autoscaling.mode": "keda",
            "autoscaling.minReplicas": 0,
            "worker.tasks": "sentiment=vader,embed=minilm-embed",
        },
    )
    job = container_view(docs, "Job", "declare")
    image = image_spec(spec.dockerfile)
    server = RedisProcess(free_port()).start()
    try:
        env = {**image.env, **job.resolved_env()}
        env["RTAI_WORKER_REDIS__URL"] = map_redis_url(
            env["RTAI_WORKER_REDIS__URL"], {"redis:6379": f"127.0.0.1:{server.port}"}, "url"
        )
        env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        env["RTAI_WORKER_MODEL_CACHE_DIR"] = str(tmp_path / "cache")  # the Job's /tmp emptyDir
        env["HOME"] = str(tmp_path)
        argv = [sys.executable if a == IMAGE_PYTHON else a for a in (*image.entrypoint, *job.args)]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        client = redis_sync.Redis(port=server.port, decode_responses=True)
        try:
            registered = {k: json.loads(v)["model"] for k, v in client.hgetall("rtai:v1:tasks").items()}
        finally:
            client.close()
        assert registered == {"sentiment": "vader", "embed": "minilm-embed"}
    finally:
        server.stop()
