"""Unit tests of the SDK's pieces that need no server: backoff, per-request frame handling, helpers, import hygiene."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys

import pytest

from rtai_client import Backoff, Chunk, Error, Result
from rtai_client._calls import Call
from rtai_client._http import http_url
from rtai_client.backoff import retry_delay
from rtai_client.cli_ops import _weights
from rtai_client.launcher import RunConfig


def test_backoff_grows_exponentially_with_equal_jitter_and_a_cap() -> None:
    b = Backoff(base_s=0.25, factor=2, max_s=4, max_attempts=5)
    rng = random.Random(7)
    for attempt, cap in enumerate([0.25, 0.5, 1, 2, 4, 4, 4]):
        assert b.cap(attempt) == cap
        delays = [b.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= cap / 2
        assert max(delays) <= cap
        assert max(delays) - min(delays) > cap / 4  # really spread: no lockstep reconnects
    assert not b.exhausted(4)
    assert b.exhausted(5)
    assert not Backoff(max_attempts=None).exhausted(10_000)


def test_retry_delay_honours_retry_after_plus_jitter() -> None:
    rng = random.Random(1)
    delays = [retry_delay(500, 9.0, rng) for _ in range(100)]
    assert all(0.5 <= d <= 0.6 for d in delays)
    assert 9.0 <= retry_delay(None, 9.0, rng) <= 10.8


async def test_call_drops_repeated_chunks_and_frames_after_the_final_one() -> None:
    call = Call(id="r1", task="generate", input="x", options={"stream": True})
    for i in [0, 1, 1, 0, 2]:
        call.offer(Chunk(id="r1", index=i, data=f"t{i}"))
    call.offer(Result(id="r1", output={"chunks": 3}))
    call.offer(Chunk(id="r1", index=3, data="late"))
    call.offer(Error(id="r1", code="internal"))
    got = [call.queue.get_nowait() for _ in range(call.queue.qsize())]
    assert [type(g).__name__ for g in got] == ["Chunk", "Chunk", "Chunk", "Result"]
    assert [g.data for g in got if isinstance(g, Chunk)] == ["t0", "t1", "t2"]
    assert call.done


def test_only_never_accepted_refusals_are_retried() -> None:
    call = Call(id="r1", task="sentiment", input="x", options={}, queue=asyncio.Queue())
    assert call.retryable(Error(id="r1", code="overloaded", retry_after_ms=100))
    assert call.retryable(Error(id="r1", code="rate_limited"))
    assert not call.retryable(Error(id="r1", code="overloaded", seq=4))  # numbered: it was accepted
    assert not call.retryable(Error(id="r1", code="invalid_request"))
    call.accepted = True
    assert not call.retryable(Error(id="r1", code="unavailable"))


def test_http_url_of_a_websocket_url() -> None:
    assert http_url("ws://127.0.0.1:8000/v1/ws", "/v1/tasks") == "http://127.0.0.1:8000/v1/tasks"
    assert http_url("wss://rtai.example.com/v1/ws?x=1", "/v1/tasks") == "https://rtai.example.com/v1/tasks"


def test_bench_task_mix() -> None:
    assert _weights(["sentiment"]) == {"sentiment": 1.0}
    assert _weights(["sentiment=3", "embed=1,generate"]) == {"sentiment": 3.0, "embed": 1.0, "generate": 1.0}


def test_run_config_from_env() -> None:
    cfg = RunConfig.from_env(
        {"RTAI_PORT": "9001", "RTAI_TASKS": "sentiment=vader,embed=minilm-embed", "RTAI_REDIS_PORT": "0"}
    )
    assert (cfg.port, cfg.tasks, cfg.redis_port, cfg.redis_url, cfg.host) == (
        9001,
        "sentiment=vader,embed=minilm-embed",
        0,
        None,
        "127.0.0.1",
    )


def test_sdk_and_cli_import_no_redis_and_no_server_code() -> None:
    code = (
        "import sys, rtai_client, rtai_client.cli, rtai_client.launcher\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('redis', 'rtai_gateway', 'rtai_worker', "
        "'rtai_transport', 'torch')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_dlq_says_clearly_when_redis_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtai_client import dlq

    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(dlq.DlqError, match="needs redis-py: pip install redis"):
        dlq.connect("redis://127.0.0.1:1/0")


def test_open_loop_schedule_never_sleeps_below_the_timer_granularity(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop's timers count whole milliseconds: a shorter sleep returns at once, and the schedule spun on a core the
    servers under test needed. It must sleep at least 1 ms and send every slot that came due meanwhile."""
    import uvloop

    from rtai_client import _loadgen_process as lg

    class _Ws:
        closed = False

        def __init__(self) -> None:
            self.outstanding: dict[bytes, float] = {}
            self.counter = 0
            self.index = 0

        def send_text(self, _payload: bytes) -> None:
            pass

    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        asked.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(lg.asyncio, "sleep", sleep)
    spec = lg.ProcessSpec(
        urls=["ws://127.0.0.1:1/v1/ws"], index=0, connections=4, idle=0, mode="open", counted=False, rate=5000.0,
        requests=0, warmup_requests=0, warmup_s=0.0, duration_s=0.3, inflight=1_000_000, timeout_s=1.0,
        frames=[("sentiment", b'{"id":"', b'"}')],
    )  # fmt: skip

    async def run() -> int:
        w = lg._Worker(spec)
        w.active = [_Ws() for _ in range(4)]  # type: ignore[list-item]
        start = lg._now()
        w.measure_from, w.stop_at, w.running = start, start + spec.duration_s, True
        await w._open_schedule(start)
        return w.issued

    issued = uvloop.run(run())
    assert asked and min(asked) >= lg.MIN_SLEEP_S
    assert len(asked) <= spec.duration_s / lg.MIN_SLEEP_S + 5  # one wake per millisecond at most, not a spin
    assert issued >= spec.rate * spec.duration_s * 0.9  # every slot that came due was sent (the last wake may be late)
