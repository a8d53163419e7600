"""`make run` starts Redis, a worker and a gateway, serves the page and a request through its WebSocket, and stops
every process cleanly on Ctrl-C (SIGINT to its process group, as a terminal sends it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _one_request(port: int) -> dict[str, object]:
    """One request through the WebSocket endpoint the page uses."""
    with connect(f"ws://127.0.0.1:{port}/v1/ws", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "hello"}))
        welcome = json.loads(ws.recv(10))
        assert welcome["type"] == "welcome"
        ws.send(json.dumps({"type": "infer", "id": "m1", "task": "sentiment", "input": "What a lovely day!"}))
        while True:
            frame: dict[str, object] = json.loads(ws.recv(15))
            if frame["type"] in ("result", "error"):
                return frame


@pytest.mark.timeout(180)
def test_make_run_serves_the_page_and_a_request_then_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    ready = tmp_path / "ready"
    env = {
        **os.environ,
        "RTAI_PORT": str(port),
        "RTAI_REDIS_PORT": "0",  # never take 6379 on a shared machine
        "RTAI_RUN_READY_FILE": str(ready),
    }
    env.pop("RTAI_REDIS_URL", None)
    log = (tmp_path / "make.log").open("wb")
    # --old-file: do not re-sync the venv in a test (the target's `install-py` prerequisite), just run.
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "--old-file=.venv/.installed", "run"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "make.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "make run not ready in 120s"
            time.sleep(0.2)
        lines = ready.read_text().splitlines()
        assert lines[0] == f"http://127.0.0.1:{port}/"
        pids = {name: int(pid) for name, pid in (line.split() for line in lines[1:])}
        assert set(pids) == {"launcher", "redis", "worker", "gateway"}

        with httpx.Client(timeout=10) as http:
            page = http.get(lines[0])
            assert page.status_code == 200
            assert "/static/app.js" in page.text
            module = http.get(f"http://127.0.0.1:{port}/static/rtai.js")
            assert module.status_code == 200
            assert "export class RtaiClient" in module.text
            tasks = http.get(f"http://127.0.0.1:{port}/v1/tasks").json()["tasks"]
            assert [t["task"] for t in tasks] == ["sentiment"]
        frame = _one_request(port)
        assert frame["type"] == "result", frame
        assert frame["output"]["label"] == "positive"

        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(60)
        out = (tmp_path / "make.log").read_text()
        # make re-raises the SIGINT it got after its recipe ended (GNU make's Ctrl-C behaviour); the launcher
        # itself must have stopped everything and exited normally.
        assert rc in (0, -signal.SIGINT), out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert "rtai stopped" in out
        for name, pid in pids.items():
            assert not _alive(pid), f"{name} (pid {pid}) still running after make run stopped"
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        for pid in pids.values():  # only the processes this test's `make run` started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()
