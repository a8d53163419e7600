"""The processes a benchmark runs against, on loopback: redis-server, gateways, workers, the inline ceiling.

Every process is started here, known by its PID, and stopped by that PID (SIGTERM, then SIGKILL). Services run with
the defaults a production user gets (JSON logs at info, metrics on, every reliability feature on); their logs go to
files under the run's work directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    ready_path: str | None = None
    log_path: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, workdir: Path, timeout: float = 90.0) -> Proc:
        self.log_path = workdir / f"{self.name}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.popen = subprocess.Popen(self.argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")
            if self._ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout} s:\n{self.tail()}")

    def _ready(self) -> bool:
        if self.ready_path is None:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)


def redis(port: int | None = None) -> Proc:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--protected-mode", "no", "--maxclients", "20000", "--dir", tempfile.gettempdir()]
    return Proc("redis", argv, port=port)


def gateway(redis_url: str, prefix: str, name: str = "gateway", **env: str) -> Proc:
    port = free_port()
    base = {
        "RTAI_GW_HOST": "127.0.0.1",
        "RTAI_GW_PORT": str(port),
        "RTAI_GW_REDIS__URL": redis_url,
        "RTAI_GW_REDIS__PREFIX": prefix,
        "RTAI_GW_LOG_JSON": "true",
        "RTAI_GW_LOG_LEVEL": "info",
    }
    return Proc(name, [sys.executable, "-m", "rtai_gateway"], {**base, **env}, port, "/readyz")


def worker(redis_url: str, prefix: str, tasks: str = "sentiment=vader", name: str = "worker", **env: str) -> Proc:
    port = free_port()
    base = {
        "RTAI_WORKER_HTTP_HOST": "127.0.0.1",
        "RTAI_WORKER_HTTP_PORT": str(port),
        "RTAI_WORKER_REDIS__URL": redis_url,
        "RTAI_WORKER_REDIS__PREFIX": prefix,
        "RTAI_WORKER_TASKS": tasks,
        "RTAI_WORKER_LOG_JSON": "true",
        "RTAI_WORKER_LOG_LEVEL": "info",
    }
    return Proc(name, [sys.executable, "-m", "rtai_worker"], {**base, **env}, port, "/readyz")


def ceiling(loop: str = "auto") -> Proc:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "ceiling.py"), "--port", str(port), "--loop", loop]
    return Proc("ceiling", argv, port=port, ready_path="/readyz")


class CpuMeter:
    """CPU time (user + system) spent by a set of processes between `start()` and `stop()`."""

    def __init__(self, procs: Iterable[Proc]) -> None:
        self.procs = {p.name: psutil.Process(p.pid) for p in procs}
        self._t0: dict[str, float] = {}
        self.used: dict[str, float] = {}

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    def start(self) -> None:
        self._t0 = {n: self._cpu(p) for n, p in self.procs.items()}

    def stop(self) -> None:
        self.used = {n: self._cpu(p) - self._t0[n] for n, p in self.procs.items()}

    def per_request_us(self, requests: int) -> dict[str, float]:
        if not requests:
            return {}
        out = {n: round(v / requests * 1e6, 1) for n, v in self.used.items()}
        out["total"] = round(sum(self.used.values()) / requests * 1e6, 1)
        return out


class Stack:
    """Processes started for one scenario; `close()` stops them all (by PID), newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(self, proc: Proc, timeout: float = 90.0) -> Proc:
        self.procs.append(proc)
        return proc.start(self.workdir, timeout)

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.procs.remove(proc)

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
