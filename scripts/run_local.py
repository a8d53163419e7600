"""`make run`: a local Redis (unless RTAI_REDIS_URL is set), one worker and one gateway; Ctrl-C stops them all.

Environment: RTAI_PORT (gateway port, default 8000), RTAI_REDIS_URL (use this Redis instead of starting one),
RTAI_TASKS (worker tasks, default `sentiment=vader`), RTAI_RUN_READY_FILE (write the URL there once ready: for tests).
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
import urllib.request
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _pick_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a process exited early (code {p.returncode}); see the log above")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - our own loopback URL
                if r.status == 200:  # noqa: PLR2004
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


def main() -> int:
    port = int(os.environ.get("RTAI_PORT", "8000"))
    if not _free(port):
        sys.stderr.write(f"port {port} is busy: set RTAI_PORT to another port\n")
        return 1
    procs: list[subprocess.Popen[bytes]] = []
    redis_url = os.environ.get("RTAI_REDIS_URL")
    workdir = Path(tempfile.mkdtemp(prefix="rtai-run-"))
    if not redis_url:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        rport = 6379 if _free(6379) else _pick_port()
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(workdir),
                ],
                stdout=subprocess.DEVNULL,
            )
        )
        redis_url = f"redis://127.0.0.1:{rport}/0"
    wport = _pick_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    worker_env = {
        **env,
        "RTAI_WORKER_REDIS__URL": redis_url,
        "RTAI_WORKER_HTTP_PORT": str(wport),
        "RTAI_WORKER_HTTP_HOST": "127.0.0.1",
        "RTAI_WORKER_LOG_JSON": "false",
        "RTAI_WORKER_TASKS": os.environ.get("RTAI_TASKS", "sentiment=vader"),
    }
    gw_env = {
        **env,
        "RTAI_GW_REDIS__URL": redis_url,
        "RTAI_GW_PORT": str(port),
        "RTAI_GW_LOG_JSON": "false",
        "RTAI_GW_DRAIN_S": "2",
    }
    procs.append(subprocess.Popen([sys.executable, "-m", "rtai_worker"], env=worker_env, cwd=ROOT))
    procs.append(subprocess.Popen([sys.executable, "-m", "rtai_gateway"], env=gw_env, cwd=ROOT))

    stopping = False

    def stop(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        _wait_http(f"http://127.0.0.1:{wport}/readyz", procs)
        _wait_http(f"http://127.0.0.1:{port}/readyz", procs)
        url = f"http://127.0.0.1:{port}/"
        sys.stdout.write(
            f"\n  rtai is running: open {url}  (WebSocket ws://127.0.0.1:{port}/v1/ws)  Ctrl-C stops it\n\n"
        )
        sys.stdout.flush()
        ready_file = os.environ.get("RTAI_RUN_READY_FILE")
        if ready_file:
            Path(ready_file).write_text(url)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in reversed(procs):  # gateway first, then worker, then Redis
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(workdir, ignore_errors=True)
        sys.stdout.write("rtai stopped\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
