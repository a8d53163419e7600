"""The gateway stops (1012) while the page streams, the request finishes meanwhile, a gateway starts again on the same
port and Redis: the page reconnects by itself, resumes its session and shows every token once and the final result."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.pages import Stack, new_page, screenshot, start_stack, stop_stack
from tests.support.redis_server import RedisHandle

pytestmark = pytest.mark.timeout(180)

WORDS = [f"w{i}" for i in range(24)]  # 120 ms apart (RTAI_TEST_TOKEN_MS): about 3 s of streaming


@pytest.fixture
def stack(redis_server: RedisHandle) -> Iterator[Stack]:
    s = start_stack(
        redis_server, {"sentiment": "vader", "generate": "tests.support.fake_models:tokens"}, RTAI_GW_DRAIN_S="0"
    )
    yield s
    stop_stack(s)


def test_page_reconnects_and_shows_the_result_that_finished_meanwhile(browser: Browser, stack: Stack) -> None:
    page, watch = new_page(browser)
    page.goto(stack.url)
    conn = page.locator("#conn")
    expect(conn).to_have_attribute("data-state", "open")
    expect(page.locator("#task option")).to_have_count(2)
    session = page.evaluate("window.rtai.session")

    page.select_option("#task", "generate")
    page.fill("#text", " ".join(WORDS))
    page.click("#send")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "streaming")
    expect(msg.locator(".tokens")).to_contain_text("W2")

    stack.gateway.stop(15)  # SIGTERM: sockets close with 1012
    expect(conn).to_have_attribute("data-state", "reconnecting")
    expect(page.locator("#conn-text")).to_contain_text("Reconnecting")
    screenshot(page, "reconnecting")
    shown_while_down = msg.locator(".tokens").text_content() or ""
    time.sleep(len(WORDS) * 0.12 + 0.5)  # the worker finishes the stream while no gateway runs
    stack.gateway.start()

    expect(conn).to_have_attribute("data-state", "open", timeout=30_000)
    expect(page.locator("#conn-text")).to_have_text("Connected (resumed)")
    expect(msg).to_have_attribute("data-status", "done", timeout=30_000)
    final = msg.locator(".tokens").text_content()
    assert final == "".join(w.upper() for w in WORDS), "tokens lost, repeated or out of order across the restart"
    assert final.startswith(shown_while_down)
    assert page.evaluate("window.rtai.session") == session
    assert page.evaluate("window.rtai.reconnects") == 1

    # The resumed connection serves new requests.
    page.select_option("#task", "sentiment")
    page.fill("#text", "Back online, wonderful")
    page.click("#send")
    expect(page.locator("#messages > li").first.locator(".label")).to_have_text("positive")
    screenshot(page, "resumed")
    # A refused WebSocket handshake while the gateway is down is logged by Chromium as a console error: expected.
    assert [e for e in watch.errors if "WebSocket connection" not in e] == []
    page.context.close()
