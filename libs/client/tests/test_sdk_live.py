"""The SDK against a live system: real Redis, a real gateway and worker processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rtai_client import Backoff, Client, ConnectionLost, RequestError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKENS = "generate=tests.support.fake_models:tokens,sentiment=vader"


async def wait_until(cond: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.05)


def url_of(g: Any) -> str:
    return f"ws://127.0.0.1:{g.port}/v1/ws"


async def test_infer_and_tasks(live: Callable[..., Any]) -> None:
    live("worker")
    g = live("gateway")
    async with Client(url_of(g)) as c:
        r = await c.infer("sentiment", "I love this so much!")
        assert r.output["label"] == "positive"
        assert set(r.output["scores"]) == {"neg", "neu", "pos", "compound"}
        assert r.seq is not None
        assert r.seq > 0
        tasks = {t.task: t for t in await c.tasks()}
        assert tasks["sentiment"].workers == 1
        with pytest.raises(RequestError) as e:
            await c.infer("no-such-task", "x")
        assert e.value.code == "unknown_task"


async def test_stream_yields_chunks_in_order_then_result(live: Callable[..., Any]) -> None:
    live("worker", tasks=TOKENS, RTAI_TEST_TOKEN_MS="10")
    g = live("gateway")
    async with Client(url_of(g)) as c:
        s = c.stream("generate", "one two three four five")
        chunks = [ch async for ch in s]
        assert [ch.data for ch in chunks] == ["ONE", "TWO", "THREE", "FOUR", "FIVE"]
        assert [ch.index for ch in chunks] == [0, 1, 2, 3, 4]
        assert s.result is not None
        assert s.result.output == {"chunks": 5}


async def test_cancel_ends_a_running_stream(live: Callable[..., Any]) -> None:
    live("worker", tasks=TOKENS, RTAI_TEST_TOKEN_MS="100")
    g = live("gateway")
    async with Client(url_of(g)) as c:
        s = c.stream("generate", " ".join(f"w{i}" for i in range(100)))
        got: list[str] = []

        async def consume() -> None:
            async for ch in s:
                got.append(ch.data)
                if len(got) == 2:
                    await s.cancel()

        with pytest.raises(RequestError) as e:
            await consume()
        assert e.value.code == "cancelled"
        assert 2 <= len(got) < 100
        # The connection is still usable.
        r = await c.infer("sentiment", "fine")
        assert r.output["label"] in {"positive", "neutral"}


async def test_reconnect_and_resume_after_gateway_restart(live: Callable[..., Any]) -> None:
    """The gateway stops (1012) while a stream runs; a new one starts on the same port; the client resumes and gets
    every chunk once, in order, and the result."""
    live("worker", tasks=TOKENS, RTAI_TEST_TOKEN_MS="60")
    g = live("gateway", RTAI_GW_DRAIN_S="0")
    states: list[str] = []
    async with Client(url_of(g), backoff=Backoff(base_s=0.2, max_s=1.0, max_attempts=60), on_state=states.append) as c:
        words = [f"w{i}" for i in range(40)]
        s = c.stream("generate", " ".join(words), deadline_ms=60_000)
        seen: list[str] = []
        restarted = False
        async for ch in s:
            seen.append(ch.data)
            if len(seen) == 3 and not restarted:
                restarted = True
                g.stop(timeout=15)
                g.start()
        assert seen == [w.upper() for w in words]
        assert s.result is not None
        assert s.result.output == {"chunks": 40}
        assert c.reconnects >= 1
        assert c.resumed
        assert "reconnecting" in states
        # A request sent after the restart works on the resumed session.
        assert (await c.infer("sentiment", "great")).output["label"] == "positive"


async def test_overloaded_refusals_are_retried_after_retry_after(live: Callable[..., Any]) -> None:
    """The only worker is paused (SIGSTOP) and the backlog limit is 2: the third request is refused `overloaded`;
    the client waits `retry_after_ms` and sends it again until the worker resumes and the backlog drains."""
    w = live("worker")
    g = live(
        "gateway",
        RTAI_GW_ADMISSION__MAX_BACKLOG="2",
        RTAI_GW_ADMISSION__RETRY_AFTER_MS="200",
        RTAI_GW_ADMISSION__REFRESH_INTERVAL_S="0.05",
    )
    async with Client(url_of(g), retries=50) as c:
        os.kill(w.pid, signal.SIGSTOP)
        try:
            first = [asyncio.create_task(c.infer("sentiment", f"good {i}", deadline_ms=30_000)) for i in range(2)]
            await asyncio.sleep(0.3)
            third = asyncio.create_task(c.infer("sentiment", "great third", deadline_ms=30_000))
            await wait_until(lambda: c.retried >= 2, 10)  # the third request was refused and sent again
            assert not third.done()
        finally:
            os.kill(w.pid, signal.SIGCONT)
        results = await asyncio.wait_for(asyncio.gather(*first, third), 30)
        assert all(r.output["label"] == "positive" for r in results)


async def test_refusal_without_retries_raises_with_retry_after(live: Callable[..., Any]) -> None:
    w = live("worker")
    g = live("gateway", RTAI_GW_ADMISSION__MAX_BACKLOG="1", RTAI_GW_ADMISSION__RETRY_AFTER_MS="750")
    async with Client(url_of(g), retries=0) as c:
        os.kill(w.pid, signal.SIGSTOP)
        try:
            first = asyncio.create_task(c.infer("sentiment", "ok"))
            await asyncio.sleep(0.5)
            with pytest.raises(RequestError) as e:
                await c.infer("sentiment", "refused")
            assert e.value.code == "overloaded"
            assert e.value.retry_after_ms == 750
        finally:
            os.kill(w.pid, signal.SIGCONT)
        await asyncio.wait_for(first, 15)


async def test_token_is_sent_and_a_refusal_says_unauthenticated(live: Callable[..., Any], tmp_path: Path) -> None:
    key = "rtai_" + secrets.token_urlsafe(24)
    keys = tmp_path / "keys"
    keys.write_text(f"{hashlib.sha256(key.encode()).hexdigest()} bob\n")
    live("worker")
    g = live("gateway", RTAI_GW_AUTH__MODE="api_key", RTAI_GW_AUTH__API_KEYS_FILE=str(keys))
    async with Client(url_of(g), token=key) as c:
        assert (await c.infer("sentiment", "lovely")).output["label"] == "positive"
    with pytest.raises(ConnectionLost) as e:
        await Client(url_of(g), token="rtai_wrong").connect()
    assert e.value.code == "unauthenticated"
    assert e.value.close_code == 1008
