"""What `run_bench` reports and when it calls the measure hooks, with scripted generator processes (no network), and
how a request count is shared out, down to one run of real processes against a loopback server."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from rtai_client import _loadgen_process as lg
from rtai_client import loadgen

# A generator process that follows the real one's line protocol without connecting anywhere. It writes the moments
# it said each line to $FAKE_LOG, so a test can place the parent's hooks against them.
FAKE_CHILD = textwrap.dedent(
    """
    import base64, json, os, sys, time
    from array import array

    spec = json.loads(sys.stdin.readline())
    log = open(os.environ["FAKE_LOG"], "a")

    def say(line, mark=None):
        if mark:
            log.write(f"{mark} {time.time()}\\n")
            log.flush()
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    def result(errors, window):
        samples = base64.b64encode(array("d", [1.0] * 10).tobytes()).decode()
        return json.dumps({"ok": 10, "sent": 10, "errors": errors, "samples": samples, "cpu_s": 0.0,
                           "window_s": window, "loop": "fake"})

    if spec["connections"]:
        say(f"ready {spec['connections']} 0 0")
        start = float(sys.stdin.readline().split()[1])
        time.sleep(max(start - time.time(), 0))
        if spec["counted"]:
            time.sleep(0.4)  # the warm-up requests
            say("warm", "warm")
            time.sleep(0.4)  # the measured ones
            say("done", "done")
            time.sleep(0.5)  # closing the sockets
            say(result({}, 0.4), "result")
        else:
            time.sleep(spec["warmup_s"] + spec["duration_s"])
            say(result({}, spec["duration_s"]))
    else:  # an idle-socket holder: 3 of its sockets failed to connect
        say(f"ready 0 {spec['idle'] - 3} 3")
        sys.stdin.readline()
        sys.stdin.readline()
        say(result({"connect_failed": 3}, 0.0))
    """
)


@pytest.fixture
def fake_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    log = tmp_path / "marks.log"
    log.touch()
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setattr(loadgen, "CHILD_ARGV", [sys.executable, str(script)])
    return log


def _marks(log: Path) -> dict[str, float]:
    return {name: float(t) for name, t in (line.split() for line in log.read_text().splitlines())}


@pytest.mark.timeout(30)
def test_a_request_count_run_meters_the_measured_requests_only(fake_children: Path) -> None:
    """The hooks bracket the measured requests: not the warm-up before them, nor the teardown after them (the servers'
    CPU per request of L counted both)."""
    hooks: dict[str, float] = {}
    loadgen.run_bench(
        "ws://127.0.0.1:9/v1/ws",
        connections=1,
        requests=10,
        warmup_requests=2,
        on_measure_start=lambda: hooks.update(start=time.time()),
        on_measure_end=lambda: hooks.update(end=time.time()),
    )
    marks = _marks(fake_children)
    assert marks["warm"] <= hooks["start"] < marks["done"] <= hooks["end"] < marks["result"]


@pytest.mark.timeout(30)
def test_idle_connections_counts_the_sockets_that_connected(fake_children: Path) -> None:
    r = loadgen.run_bench("ws://127.0.0.1:9/v1/ws", connections=1, duration_s=0.2, warmup_s=0.0, idle_connections=10)
    assert r.idle_connections == 7
    assert r.errors == {"connect_failed": 3}
    assert r.connections == 1


class _Ws:
    """What `_Worker` uses of a RawWebSocket."""

    closed = False

    def __init__(self) -> None:
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.outstanding: dict[bytes, float] = {}
        self.counter = 0
        self.index = 0
        self.sent: list[bytes] = []

    def send_text(self, payload: bytes) -> None:
        self.sent.append(payload)


def _spec(**kw: object) -> lg.ProcessSpec:
    base: dict[str, object] = {
        "urls": ["ws://127.0.0.1:9/v1/ws"],
        "index": 0,
        "connections": 1,
        "idle": 0,
        "mode": "closed",
        "counted": False,
        "rate": 0.0,
        "requests": 0,
        "warmup_requests": 0,
        "warmup_s": 0.0,
        "duration_s": 1.0,
        "inflight": 1,
        "timeout_s": 5.0,
        "frames": [("sentiment", b'{"type":"infer","task":"sentiment","id":"', b'","input":"x"}')],
    }
    return lg.ProcessSpec(**{**base, **kw})  # type: ignore[arg-type]


async def test_a_holder_counts_sockets_the_server_closes_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle socket closed while the holder waits for `go` is one fewer idle socket during the run: an error."""
    w = lg._Worker(_spec(connections=0, idle=5))
    ws = _Ws()
    w.on_close(ws, 1006)  # type: ignore[arg-type]
    assert w.errors == {}  # closed before its welcome: that is a `connect_failed`, counted where it failed
    ws.welcomed.set_result(None)
    w.idle.append(ws)  # type: ignore[arg-type]
    w.on_close(ws, 1001)  # type: ignore[arg-type]
    assert w.errors == {"idle_closed_1001": 1}
    w.stopping = True  # told to stop: closes are the end of the run
    w.on_close(ws, 1001)  # type: ignore[arg-type]
    assert w.errors == {"idle_closed_1001": 1}


async def test_a_request_count_process_says_warm_after_its_warm_up_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[tuple[str, int]] = []
    w = lg._Worker(_spec(counted=True, requests=3, warmup_requests=1))
    monkeypatch.setattr(lg, "_say", lambda line: said.append((line, w.ok)))
    ws = _Ws()
    w.active.append(ws)  # type: ignore[arg-type]
    run = asyncio.create_task(w.run(time.time()))
    for n in range(1, 4):
        while len(ws.sent) < n:
            await asyncio.sleep(0.001)
        assert said == ([] if n == 1 else [("warm", 0)])  # no `warm` while the warm-up request is out
        w.on_text(ws, b'{"type":"result","id":"0.0.%d","output":{}}' % n)  # type: ignore[arg-type]
    assert w.all_done.done()  # the last answer ends the run, not the next 50 ms poll
    await asyncio.wait_for(run, 2)
    assert (w.ok, said) == (2, [("warm", 0)])


async def test_a_process_with_no_share_of_a_request_count_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fewer requests than processes: a share of 0 must not make a process run by the clock instead."""
    said: list[str] = []
    monkeypatch.setattr(lg, "_say", said.append)
    w = lg._Worker(_spec(counted=True, requests=0, duration_s=30.0))
    ws = _Ws()
    w.active.append(ws)  # type: ignore[arg-type]
    await asyncio.wait_for(w.run(time.time()), 2)
    assert ws.sent == []
    assert said == ["warm"]  # and `done` from _child_main: the parent waits for both from every counting process


@pytest.mark.timeout(30)
async def test_a_request_count_over_more_processes_than_requests_runs_just_those() -> None:
    """Real generator processes against a WebSocket server that answers every request."""
    from websockets.asyncio.server import ServerConnection, serve

    async def answer(ws: ServerConnection) -> None:
        async for m in ws:
            f = orjson.loads(m)
            if f["type"] == "hello":
                await ws.send(orjson.dumps({"type": "welcome", "session": "s", "resumed": False}).decode())
            elif f["type"] == "infer":
                await ws.send(orjson.dumps({"type": "result", "id": f["id"], "seq": 1, "output": 1}).decode())

    async with serve(answer, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/v1/ws"
        r = await asyncio.to_thread(loadgen.run_bench, url, connections=2, processes=2, requests=1, duration_s=10.0)
    assert (r.sent, r.ok, r.errors) == (1, 1, {})  # before: the second process ran 10 s by the clock
