"""Gateway and worker processes for cross-service tests: started with real env vars, stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    name: str
    port: int
    env: dict[str, str]
    module: str
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="rtai-svc-", suffix=".log")[1]))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> Service:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in {timeout}s:\n{self.logs()[-3000:]}")

    def wait_task(self, task: str, timeout: float = 15.0) -> None:
        """Until this gateway lists `task` (a worker registered it and the gateway's catalog refreshed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = httpx.get(f"{self.base}/v1/tasks", timeout=2).json()["tasks"]
            if any(t["task"] == task for t in tasks):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} does not list task {task!r}")

    def metric(self, prefix: str) -> float:
        """The sum of this process's /metrics samples whose line starts with `prefix` (0 if it does not answer)."""
        try:
            text = httpx.get(f"{self.base}/metrics", timeout=5).text
        except httpx.HTTPError:
            return 0.0
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(prefix))

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def gateway(redis_env: dict[str, str], prefix: str, **extra: str) -> Service:
    port = free_port()
    env = {
        "RTAI_GW_PORT": str(port),
        "RTAI_GW_HOST": "127.0.0.1",
        "RTAI_GW_REDIS__PREFIX": prefix,
        "RTAI_GW_LOG_JSON": "true",
    }
    env.update({f"RTAI_GW_{k}": v for k, v in redis_env.items()})
    env.update({k if k.startswith(("RTAI_", "OTEL_")) else f"RTAI_GW_{k.upper()}": v for k, v in extra.items()})
    return Service("gateway", port, env, "rtai_gateway")


def worker(redis_env: dict[str, str], prefix: str, tasks: str = "sentiment=vader", **extra: str) -> Service:
    port = free_port()
    env = {
        "RTAI_WORKER_HTTP_PORT": str(port),
        "RTAI_WORKER_HTTP_HOST": "127.0.0.1",
        "RTAI_WORKER_REDIS__PREFIX": prefix,
        "RTAI_WORKER_TASKS": tasks,
        "RTAI_WORKER_LOG_JSON": "true",
    }
    env.update({f"RTAI_WORKER_{k}": v for k, v in redis_env.items()})
    env.update(
        {k if k.startswith(("RTAI_", "OTEL_", "PYTHON")) else f"RTAI_WORKER_{k.upper()}": v for k, v in extra.items()}
    )
    return Service("worker", port, env, "rtai_worker")


def redis_env_for_url(url: str) -> dict[str, str]:
    return {"REDIS__URL": url}


def redis_env_for_sentinels(sentinels: list[str], master: str = "mymaster") -> dict[str, str]:
    return {"REDIS__SENTINELS": ",".join(sentinels), "REDIS__MASTER": master}


def ws_url(g: Service) -> str:
    """The WebSocket endpoint of a gateway."""
    return f"ws://127.0.0.1:{g.port}/v1/ws"


def start(services: list[Service], svc: Service) -> Service:
    """Start `svc`, listed in `services` first so the test's fixture stops it even if it fails to start."""
    services.append(svc)
    return svc.start()


def vader_stack(redis_url: str, prefix: str, services: list[Service], **gateway_env: str) -> tuple[Service, Service]:
    """One VADER worker and one gateway (with `gateway_env` settings) on `redis_url` under `prefix`, started and
    added to `services` (which the test stops). Returns (gateway, worker)."""
    env = redis_env_for_url(redis_url)
    w = worker(env, prefix).start()
    services.append(w)
    g = gateway(env, prefix, **gateway_env).start()
    services.append(g)
    return g, w


WORKER_BLOCK_S = 0.5
"""How long a worker's read of its task stream blocks (`TaskServer._gather`)."""


@contextlib.asynccontextmanager
async def stalled(worker: Service) -> AsyncIterator[None]:
    """The worker stopped (SIGSTOP) for the block, resumed after it. Past its blocking read Redis holds no read for
    it any more, so jobs submitted meanwhile wait in the queue unread, not handed to the stopped process."""
    worker.signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(WORKER_BLOCK_S + 0.3)
        yield
    finally:
        worker.signal(signal.SIGCONT)
