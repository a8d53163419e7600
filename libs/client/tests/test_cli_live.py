"""The `rtai` command line against a live system: tasks, send (plain and streaming), dlq list/replay, bench."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rtai_client.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RTAI = str(Path(sys.executable).parent / "rtai")


def url_of(g: Any) -> str:
    return f"ws://127.0.0.1:{g.port}/v1/ws"


def test_tasks_send_and_chat(live: Callable[..., Any]) -> None:
    live("worker", tasks="sentiment=vader,generate=tests.support.fake_models:tokens", RTAI_TEST_TOKEN_MS="5")
    g = live("gateway")
    runner = CliRunner()
    out = runner.invoke(app, ["tasks", "--url", url_of(g)])
    assert out.exit_code == 0, out.output
    assert "sentiment" in out.output
    assert "generate" in out.output

    out = runner.invoke(app, ["send", "I love this", "--url", url_of(g)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("positive")

    out = runner.invoke(app, ["send", "I love this", "--url", url_of(g), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["output"]["label"] == "positive"

    out = runner.invoke(app, ["send", "alpha beta gamma", "--task", "generate", "--url", url_of(g)])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == "ALPHABETAGAMMA"  # tokens printed as they arrive

    out = runner.invoke(app, ["chat", "--url", url_of(g)], input="one two\n/task sentiment\nso happy\n")
    assert out.exit_code == 0, out.output
    assert "ONETWO" in out.output  # streamed answer of `generate`
    assert "positive" in out.output  # after `/task sentiment`

    out = runner.invoke(app, ["send", "x", "--task", "nope", "--url", url_of(g)])
    assert out.exit_code == 1
    assert "unknown_task" in out.output


def test_dlq_list_and_replay(redis_server: Any, prefix: str) -> None:
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_server.url)
    job = {
        "type": "job",
        "job_id": "j1",
        "request_id": "r1",
        "owner": "anon:s",
        "session": "s",
        "task": "sentiment",
        "input": "replay me please",
        "deadline_ms": 1,
        "enqueued_ms": 1,
        "reply_to": f"{prefix}:v1:replies:gone",
    }
    dlq_id = r.xadd(f"{prefix}:v1:dlq:sentiment", {"m": json.dumps(job), "deliveries": "5", "worker": "w1"}).decode()
    common = ["--task", "sentiment", "--redis-url", redis_server.url, "--prefix", prefix]
    runner = CliRunner()
    out = runner.invoke(app, ["dlq", "list", *common])
    assert out.exit_code == 0, out.output
    assert dlq_id in out.output
    assert "replay me please" in out.output
    out = runner.invoke(app, ["dlq", "list", *common, "--json"])
    assert json.loads(out.output)["job"]["request_id"] == "r1"

    out = runner.invoke(app, ["dlq", "replay", *common])
    assert out.exit_code == 1
    assert "--all" in out.output
    before = time.time() * 1000
    out = runner.invoke(app, ["dlq", "replay", *common, dlq_id])
    assert out.exit_code == 0, out.output
    assert "1 job(s) re-queued" in out.output
    assert r.xlen(f"{prefix}:v1:dlq:sentiment") == 0
    [(_, fields)] = r.xrange(f"{prefix}:v1:jobs:sentiment")
    requeued = json.loads(fields[b"m"])
    assert requeued["request_id"] == "r1"
    assert requeued["deadline_ms"] >= before + 59_000  # a fresh deadline
    r.close()


@pytest.mark.timeout(120)
def test_bench_writes_json_and_png(live: Callable[..., Any], tmp_path: Path) -> None:
    live("worker")
    # A closed loop on VADER outruns the default 100 frames/s per connection: lift it, so errors mean bugs.
    g = live("gateway", RTAI_GW_LIMITS__MESSAGES_PER_S="100000", RTAI_GW_LIMITS__MESSAGE_BURST="100000")
    js, png = tmp_path / "bench.json", tmp_path / "bench.png"
    cmd = [
        RTAI,
        "bench",
        "--url",
        url_of(g),
        "-c",
        "4",
        "-d",
        "3",
        "--warmup",
        "0.5",
        "--json",
        str(js),
        "--png",
        str(png),
        "--label",
        "smoke",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "p99.9" in proc.stdout
    report = json.loads(js.read_text())
    assert report["label"] == "smoke"
    assert report["connections"] == 4
    assert report["ok"] > 20
    assert report["error_count"] == 0
    assert 2.5 <= report["duration_s"] <= 5
    assert report["throughput"] == pytest.approx(report["ok"] / report["duration_s"], rel=0.2)
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"] < 5000
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width >= 400
    assert height >= 300


@pytest.mark.timeout(120)
def test_bench_holds_idle_sockets_in_a_process_of_its_own(live: Callable[..., Any]) -> None:
    import httpx

    from rtai_client.loadgen import run_bench

    live("worker")
    g = live("gateway", RTAI_GW_LIMITS__MESSAGES_PER_S="100000", RTAI_GW_LIMITS__MESSAGE_BURST="100000")
    open_at_start: list[str] = []

    def gateway_connections() -> None:
        text = httpx.get(f"http://127.0.0.1:{g.port}/metrics", timeout=5).text
        open_at_start.extend(line for line in text.splitlines() if line.startswith("rtai_gateway_connections "))

    timed = run_bench(
        url_of(g),
        connections=2,
        duration_s=1.5,
        warmup_s=0.3,
        idle_connections=300,
        on_measure_start=gateway_connections,
    )
    assert open_at_start == ["rtai_gateway_connections 302.0"]  # the idle sockets were open while it measured
    assert (timed.processes, timed.connections, timed.idle_connections) == (2, 2, 300)
    assert timed.error_count == 0 and timed.ok > 20
    assert 1.4 <= timed.duration_s <= 1.6  # the measuring window, not the holder's
    # A run counted in requests ends when its requests do, whatever the idle sockets' holder is still doing.
    counted = run_bench(url_of(g), connections=1, requests=50, warmup_s=0.0, idle_connections=50, duration_s=30.0)
    assert counted.ok == 50 and counted.error_count == 0
    assert counted.duration_s < 10
