"""`rtai run` / `make run`: a local Redis (unless one is given), one inference worker and one gateway; Ctrl-C stops all.

It only spawns processes (`redis-server`, `python -m rtai_worker`, `python -m rtai_gateway`) and never imports server
code, so the client package stays free of server dependencies; the services must be installed in the same Python.

Environment (each also a `rtai run` option): RTAI_PORT (gateway port, default 8000), RTAI_HOST (listen address,
default 127.0.0.1), RTAI_REDIS_URL (use this Redis instead of starting one), RTAI_REDIS_PORT (port of the Redis it
starts; default 6379 when free, 0 picks a free one), RTAI_TASKS (worker tasks, default `sentiment=vader`),
RTAI_RUN_READY_FILE (once ready, write the page URL there, then one `name pid` line per process, the launcher's
own first: for tests).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

DEFAULT_TASKS = "sentiment=vader"


@dataclass
class RunConfig:
    port: int = 8000
    host: str = "127.0.0.1"
    redis_url: str | None = None
    redis_port: int | None = None
    tasks: str = DEFAULT_TASKS
    ready_file: Path | None = None
    drain_s: float = 2.0
    ready_timeout_s: float = 180.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> RunConfig:
        e = os.environ if env is None else env
        rp = e.get("RTAI_REDIS_PORT")
        ready = e.get("RTAI_RUN_READY_FILE")
        return cls(
            port=int(e.get("RTAI_PORT", "8000")),
            host=e.get("RTAI_HOST", "127.0.0.1"),
            redis_url=e.get("RTAI_REDIS_URL") or None,
            redis_port=int(rp) if rp else None,
            tasks=e.get("RTAI_TASKS", DEFAULT_TASKS),
            ready_file=Path(ready) if ready else None,
        )


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _pick_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies (Linux), so a killed launcher leaves no orphans."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(name: str, argv: list[str], env: dict[str, str], stdout: int | None = None) -> _Proc:
    # A process group of its own: Ctrl-C reaches only the launcher, which stops the others in order.
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return _Proc(name, subprocess.Popen(argv, env=env, stdout=stdout, start_new_session=True, preexec_fn=preexec))


def _wait_http(url: str, procs: list[_Proc], timeout: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited early (code {p.popen.returncode}); see its log above")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    if not stopping():
        raise RuntimeError(f"{url} not ready after {timeout:.0f}s")


def _redis(cfg: RunConfig, workdir: Path) -> tuple[str, _Proc | None]:
    if cfg.redis_url:
        return cfg.redis_url, None
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise RuntimeError(
            "redis-server not found: install it (Debian: apt-get install redis-server) or set RTAI_REDIS_URL"
        )
    port = cfg.redis_port if cfg.redis_port else (6379 if cfg.redis_port is None and _port_free(6379) else _pick_port())
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return f"redis://127.0.0.1:{port}/0", _spawn(
        "redis", [*argv, "--dir", str(workdir)], dict(os.environ), subprocess.DEVNULL
    )


def run(cfg: RunConfig, out: TextIO = sys.stdout) -> int:
    """Start everything, wait until ready, run until SIGINT/SIGTERM or a process exits, stop all; the exit code."""
    if not _port_free(cfg.port):
        out.write(f"port {cfg.port} is busy: set RTAI_PORT (or --port) to another port\n")
        return 1
    stopping = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: list[_Proc] = []
    workdir = Path(tempfile.mkdtemp(prefix="rtai-run-"))
    code = 0
    try:
        redis_url, redis_proc = _redis(cfg, workdir)
        if redis_proc is not None:
            procs.append(redis_proc)
        wport = _pick_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **cfg.extra_env}
        worker_env = {
            **env,
            "RTAI_WORKER_REDIS__URL": redis_url,
            "RTAI_WORKER_HTTP_PORT": str(wport),
            "RTAI_WORKER_HTTP_HOST": "127.0.0.1",
            "RTAI_WORKER_LOG_JSON": env.get("RTAI_WORKER_LOG_JSON", "false"),
            "RTAI_WORKER_TASKS": cfg.tasks,
        }
        gw_env = {
            **env,
            "RTAI_GW_REDIS__URL": redis_url,
            "RTAI_GW_PORT": str(cfg.port),
            "RTAI_GW_HOST": cfg.host,
            "RTAI_GW_LOG_JSON": env.get("RTAI_GW_LOG_JSON", "false"),
            "RTAI_GW_DRAIN_S": str(cfg.drain_s),
        }
        procs.append(_spawn("worker", [sys.executable, "-m", "rtai_worker"], worker_env))
        procs.append(_spawn("gateway", [sys.executable, "-m", "rtai_gateway"], gw_env))
        _wait_http(f"http://127.0.0.1:{wport}/readyz", procs, cfg.ready_timeout_s, lambda: stopping)
        _wait_http(f"http://127.0.0.1:{cfg.port}/readyz", procs, cfg.ready_timeout_s, lambda: stopping)
        if not stopping:
            url = f"http://127.0.0.1:{cfg.port}/"
            out.write(
                f"\n  rtai is running: open {url}  (WebSocket ws://127.0.0.1:{cfg.port}/v1/ws)  Ctrl-C stops it\n"
            )
            out.write(f"  tasks: {cfg.tasks}   redis: {redis_url}\n\n")
            out.flush()
            if cfg.ready_file is not None:
                lines = [url, f"launcher {os.getpid()}", *(f"{p.name} {p.popen.pid}" for p in procs)]
                cfg.ready_file.write_text("\n".join(lines) + "\n")
        while not stopping:
            dead = [p for p in procs if p.popen.poll() is not None]
            if dead:
                out.write(f"{dead[0].name} exited (code {dead[0].popen.returncode}): stopping the rest\n")
                code = 1
                break
            time.sleep(0.2)
    except RuntimeError as e:
        out.write(f"rtai run: {e}\n")
        code = 1
    finally:
        _stop_all(procs)
        shutil.rmtree(workdir, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)
        out.write("rtai stopped\n")
        out.flush()
    return code


def _stop_all(procs: list[_Proc], timeout: float = 20.0) -> None:
    """Gateway first (it drains and closes sockets with 1012), then the worker, then Redis; SIGKILL after `timeout`."""
    for p in reversed(procs):
        if p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
        try:
            p.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait(5)


def main() -> int:
    return run(RunConfig.from_env())
