"""The live autoscaling proof's stack: the gateway and worker charts rendered with the kind values and run as their pods
do (local_service.py), a Prometheus scraping them the way the rendered ServiceMonitors say, and the readings taken from
it (query ranges as KEDA would have seen them, a process's CPU against its request)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.hpa_sim import ScaledTarget
from tests.deploy.local_service import SERVICES, LocalService
from tests.deploy.render import REPO_ROOT, VALUES_DIR, Doc, container_view, find, render_chart

sys.path.insert(0, str(REPO_ROOT / "tests" / "observability"))
from obs_stack import Proc, run_prometheus, start_redis, wait_until_scraped

KIND = (VALUES_DIR / "standalone.yaml", VALUES_DIR / "kind.yaml")
"""The kind profile's values, on one plain redis-server instead of the redis chart's Sentinel topology (the
conformance test runs that one): the queries do not depend on it."""
SCRAPE = "1s"


def rendered(chart: str, set_values: dict[str, Any]) -> tuple[list[Doc], ScaledTarget]:
    docs = render_chart(chart, KIND, set_values)
    (so,) = find(docs, "ScaledObject")
    target = ScaledTarget.from_scaled_object(so)
    # the thresholds are lowered; the queries are the shipped ones
    (shipped,) = find(render_chart(chart, KIND), "ScaledObject")
    shipped_queries = {t["name"]: t["metadata"]["query"] for t in shipped["spec"]["triggers"]}
    for tr in target.triggers:
        if tr.name in shipped_queries:
            assert tr.query == shipped_queries[tr.name]
    return docs, target


def scrape_job(docs: list[Doc], svc: LocalService) -> dict[str, Any]:
    """The scrape config the Prometheus Operator would generate from the rendered ServiceMonitor, for one local pod."""
    (sm,) = find(docs, "ServiceMonitor")
    sel = sm["spec"]["selector"]["matchLabels"]
    (service,) = [s for s in find(docs, "Service") if sel.items() <= s["metadata"]["labels"].items()]
    (endpoint,) = sm["spec"]["endpoints"]
    (svc_port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    container_port = svc.view.port(svc_port["targetPort"])  # Service targetPort (named) -> container port
    namespace = sm["spec"]["namespaceSelector"]["matchNames"][0]
    return {
        "job_name": service["metadata"]["name"],
        "metrics_path": endpoint.get("path", "/metrics"),
        "scrape_interval": SCRAPE,
        "scrape_timeout": "900ms",
        "static_configs": [
            {
                "targets": [f"127.0.0.1:{svc.local_ports[container_port]}"],
                "labels": {
                    "namespace": namespace,
                    "service": service["metadata"]["name"],
                    "endpoint": endpoint["port"],
                    "pod": svc.pod_name,
                    "container": svc.view.name,
                },
            }
        ],
    }


def start_prometheus(workdir: Path, jobs: list[dict[str, Any]]) -> tuple[Proc, str]:
    return run_prometheus(workdir, {"global": {"scrape_interval": SCRAPE}, "scrape_configs": jobs})


def query_range(url: str, query: str, start: float, end: float) -> dict[float, float | None]:
    """The query evaluated every second over [start, end] (what KEDA's instant queries would have returned)."""
    r = httpx.get(
        f"{url}/api/v1/query_range",
        params={"query": query, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": "1"},
        timeout=10,
    )
    body = r.json()
    assert body["status"] == "success", body
    series = body["data"]["result"]
    assert len(series) <= 1, f"{query} gave {len(series)} series"
    points = {float(t): float(v) for t, v in series[0]["values"]} if series else {}
    return {float(t): points.get(float(t)) for t in range(int(start), int(end) + 1)}


def instant(url: str, query: str) -> float:
    body = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10).json()
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


class CpuSampler(threading.Thread):
    """CPU of a process as a fraction of its CPU request, every second (utime+stime from /proc/<pid>/stat)."""

    def __init__(self, pid: int, request_cores: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.request = pid, request_cores
        self.samples: list[tuple[float, float]] = []
        self.stop_event = threading.Event()

    def _ticks(self) -> int:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def run(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        with contextlib.suppress(OSError):
            last_t, last = time.time(), self._ticks()
            while not self.stop_event.wait(1.0):
                now_t, now = time.time(), self._ticks()
                self.samples.append((now_t, (now - last) / hz / (now_t - last_t) / self.request))
                last_t, last = now_t, now


@contextlib.contextmanager
def running_stack(tmp_path: Path, set_values: dict[str, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """redis-server, the rendered worker and gateway (kind values), Prometheus scraping them as the ServiceMonitors
    say; "services" lists every process started, a worker started later by the test too. Everything stopped by PID."""
    procs: list[Proc] = []
    services: list[LocalService] = []
    try:
        redis_proc, redis_url = start_redis(tmp_path)
        procs.append(redis_proc)
        addrs = {"redis:6379": redis_url.removeprefix("redis://").removesuffix("/0")}
        out: dict[str, Any] = {"services": services, "redis_addrs": addrs}
        for chart in ("inference-worker", "gateway"):
            docs, target = rendered(chart, set_values[chart])
            view = container_view(docs, "Deployment", SERVICES[chart].container)
            svc = LocalService(SERVICES[chart], view, tmp_path / chart, redis_addrs=addrs)
            services.append(svc)
            out[chart] = (docs, target, svc)
        prom, url = start_prometheus(
            tmp_path, [scrape_job(out[c][0], out[c][2]) for c in ("inference-worker", "gateway")]
        )
        procs.append(prom)
        for chart in ("inference-worker", "gateway"):
            svc = out[chart][2]
            svc.start()
            svc.wait_probe("readiness", 45)
        wait_until_scraped(url, [s.local_ports[next(iter(s.local_ports))] for s in services])
        out["prometheus"] = url
        yield out
    finally:
        for svc in reversed(services):
            svc.terminate(10)
        for p in reversed(procs):
            p.stop()
