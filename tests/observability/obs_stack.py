"""A real stack on loopback for the live observability test: redis-server, gateway, inference worker(s) and a
Prometheus scraping them every second. Every process is started here, tracked by PID and stopped by PID.

Also used by scripts/dashboards_preview.py, so nothing here depends on pytest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from obs_support import PROMETHEUS, RULES

HERE = Path(__file__).resolve().parent
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
WORKER_TASKS = "sentiment=vader,slow=slow_model:slow,stream=slow_model:streaming"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StartError(RuntimeError):
    pass


@dataclass
class Proc:
    """A child process with its output in a log file; stopped by PID, SIGCONT first in case a test paused it."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def spawn(name: str, cmd: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    return Proc(name, popen, log)


def wait_http(proc: Proc, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not proc.alive():
            raise StartError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            r = httpx.get(url, timeout=1.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.1)
    raise StartError(f"{proc.name} not ready at {url} after {timeout}s ({last}):\n{proc.tail()}")


def start_redis(workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn(
        "redis",
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        workdir,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return proc, f"redis://127.0.0.1:{port}/0"
        if not proc.alive():
            break
        time.sleep(0.05)
    proc.stop()
    raise StartError(f"redis-server did not answer:\n{proc.tail()}")


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RTAI_", "OTEL_"))}
    env.update(extra)
    return env


def start_gateway(
    workdir: Path, redis_url: str, prefix: str, port: int | None = None, **settings: str
) -> tuple[Proc, int]:
    port = port or free_port()
    env = _child_env(
        {
            "RTAI_GW_HOST": "127.0.0.1",
            "RTAI_GW_PORT": str(port),
            "RTAI_GW_GATEWAY_ID": f"obs-gw-{port}",
            "RTAI_GW_REDIS__URL": redis_url,
            "RTAI_GW_REDIS__PREFIX": prefix,
            "RTAI_GW_DRAIN_S": "1",
            **{f"RTAI_GW_{k.upper()}": v for k, v in settings.items()},
        }
    )
    proc = spawn(f"gateway-{port}", [sys.executable, "-m", "rtai_gateway"], workdir, env)
    try:
        wait_http(proc, f"http://127.0.0.1:{port}/readyz")
    except StartError:
        proc.stop()
        raise
    return proc, port


def start_worker(
    workdir: Path, redis_url: str, prefix: str, port: int | None = None, **settings: str
) -> tuple[Proc, int]:
    port = port or free_port()
    env = _child_env(
        {
            "RTAI_WORKER_HTTP_PORT": str(port),
            "RTAI_WORKER_REDIS__URL": redis_url,
            "RTAI_WORKER_REDIS__PREFIX": prefix,
            "RTAI_WORKER_TASKS": WORKER_TASKS,
            "RTAI_WORKER_SHUTDOWN_GRACE_S": "1",
            "RTAI_OBS_SLOW_S": "2",
            **{f"RTAI_WORKER_{k.upper()}": v for k, v in settings.items()},
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")])),
        }
    )
    proc = spawn(f"worker-{port}", [sys.executable, "-m", "rtai_worker"], workdir, env)
    try:
        wait_http(proc, f"http://127.0.0.1:{port}/readyz", timeout=60)
    except StartError:
        proc.stop()
        raise
    return proc, port


def live_rules_file(workdir: Path) -> Path:
    """The rules file with every group evaluated each second, so recorded series exist within the test's seconds."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group["interval"] = "1s"
    path = workdir / "rtai.rules.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_prometheus(workdir: Path, config: dict[str, Any]) -> tuple[Proc, str]:
    """A Prometheus server on a free loopback port with `config` as its prometheus.yml, once it says it is ready."""
    port = free_port()
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = spawn(
        "prometheus",
        [
            PROMETHEUS,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(proc, f"{url}/-/ready")
    except StartError:
        proc.stop()
        raise
    return proc, url


def start_prometheus(workdir: Path, targets: dict[str, list[int]]) -> tuple[Proc, str]:
    """Prometheus scraping `targets` (job -> ports) every second, with the shipped rules evaluated every second."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
        "rule_files": [str(live_rules_file(workdir))],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}
            for job, ports in targets.items()
        ],
    }
    return run_prometheus(workdir, config)


@dataclass
class Stack:
    workdir: Path
    prefix: str = field(default_factory=lambda: f"obs-{uuid.uuid4().hex[:12]}")
    procs: list[Proc] = field(default_factory=list)
    redis_url: str = ""
    gateway: Proc | None = None
    gateway_port: int = 0
    workers: list[tuple[Proc, int]] = field(default_factory=list)
    worker_ports: list[int] = field(default_factory=list)
    """Ports reserved for workers (the first is started at once, the others on demand: Prometheus knows them all)."""
    prometheus_url: str = ""

    def _track(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        return "\n".join(f"----- {p.name} (pid {p.pid}) -----\n{p.tail()}" for p in self.procs)

    def start_worker(self, **settings: str) -> Proc:
        """Start the next worker on its reserved port (Prometheus already scrapes it)."""
        port = self.worker_ports[len(self.workers)]
        proc, port = start_worker(self.workdir, self.redis_url, self.prefix, port, **settings)
        self.workers.append((self._track(proc), port))
        return proc

    @property
    def gateway_ws(self) -> str:
        return f"ws://127.0.0.1:{self.gateway_port}/v1/ws"

    def metrics_text(self, port: int) -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def prom_query(prometheus_url: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, str] = {"query": promql}
    if at is not None:
        params["time"] = f"{at:.3f}"
    r = httpx.get(f"{prometheus_url}/api/v1/query", params=params, timeout=10)
    body = r.json()
    if body.get("status") != "success":
        raise AssertionError(f"query failed: {promql}\n{body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_until_scraped(prometheus_url: str, ports: list[int], timeout: float = 30.0) -> None:
    """Prometheus 2.x hands new targets to the scrapers on 5 s tickers (discovery, then scrape reload), so the first
    scrape comes up to ~10 s after start: wait for it, or early load would never be seen."""
    wanted = {f"127.0.0.1:{p}" for p in ports}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        up = {s["metric"]["instance"] for s in prom_query(prometheus_url, "up == 1")}
        if wanted <= up:
            return
        time.sleep(0.25)
    raise StartError(f"Prometheus has not scraped {sorted(wanted)} after {timeout}s")


@contextlib.contextmanager
def running_stack(workdir: Path, workers: int = 2, **gateway_settings: str) -> Iterator[Stack]:
    """Prometheus, Redis, one gateway and one worker, all scraped before this yields. Prometheus starts first (its
    first scrape takes a while) and also knows `workers - 1` reserved ports, for workers a test starts later with
    `stack.start_worker()`."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir)
    stack.worker_ports = [free_port() for _ in range(workers)]
    stack.gateway_port = free_port()
    try:
        prom, stack.prometheus_url = start_prometheus(
            workdir, {"gateway": [stack.gateway_port], "inference-worker": stack.worker_ports}
        )
        stack._track(prom)
        redis_proc, stack.redis_url = start_redis(workdir)
        stack._track(redis_proc)
        stack.start_worker(reclaim_idle_ms="1000")
        stack.gateway, _ = start_gateway(workdir, stack.redis_url, stack.prefix, stack.gateway_port, **gateway_settings)
        stack._track(stack.gateway)
        wait_until_scraped(stack.prometheus_url, [stack.gateway_port, stack.worker_ports[0]])
        yield stack
    finally:
        stack.stop()
