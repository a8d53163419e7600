"""Real Redis for tests: an explicit URL, testcontainers when a Docker engine answers, else a local redis-server.

Never a mock and never a fixed port. Each test isolates itself with its own key prefix, so one server serves a
whole session and nothing is ever flushed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.support.ports import free_port


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeError("redis-server not found: run `make install` (Debian: apt-get install redis-server)")
    return found


@dataclass
class RedisProcess:
    """One redis-server (or sentinel) process we started, stopped only by its PID."""

    port: int
    args: list[str] = field(default_factory=list)
    sentinel: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rtai-redis-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        conf = self.workdir / ("sentinel.conf" if self.sentinel else "redis.conf")
        if not conf.exists():
            conf.write_text("")
        cmd = [redis_binary(), str(conf)]
        if self.sentinel:
            cmd.append("--sentinel")
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir), "--protected-mode", "no"]
        if not self.sentinel:
            cmd += ["--save", "", "--appendonly", "no"]
        cmd += self.args
        log = open(self.workdir / "log.txt", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ping(timeout)
        return self

    def wait_ping(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis on {self.port} exited: {(self.workdir / 'log.txt').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis on port {self.port} did not answer")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@dataclass
class RedisHandle:
    url: str
    process: RedisProcess | None = None
    container: object | None = None

    def close(self) -> None:
        if self.process is not None:
            self.process.stop()
            shutil.rmtree(self.process.workdir, ignore_errors=True)
        if self.container is not None:
            self.container.stop()  # type: ignore[attr-defined]


def _docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_redis() -> RedisHandle:
    explicit = os.environ.get("RTAI_TEST_REDIS_URL")
    if explicit:
        return RedisHandle(url=explicit)
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        container = RedisContainer("redis:7.4").start()
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        return RedisHandle(url=f"redis://{host}:{port}/0", container=container)
    proc = RedisProcess(port=free_port()).start()
    return RedisHandle(url=proc.url, process=proc)
