"""Clear errors on the page: an overloaded service shows a retry countdown and then the result; a gateway that requires
a key says so, and the page connects once the user enters one."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.pages import new_page, screenshot, start_stack, stop_stack
from tests.support.redis_server import RedisHandle

pytestmark = pytest.mark.timeout(120)


def test_overloaded_shows_a_countdown_then_the_result(browser: Browser, redis_server: RedisHandle) -> None:
    stack = start_stack(
        redis_server,
        {"sentiment": "vader"},
        RTAI_GW_ADMISSION__MAX_BACKLOG="1",
        RTAI_GW_ADMISSION__RETRY_AFTER_MS="2500",
        RTAI_GW_ADMISSION__REFRESH_INTERVAL_S="0.05",
    )
    page, watch = new_page(browser)
    try:
        page.goto(stack.url)
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        os.kill(stack.worker.pid, signal.SIGSTOP)
        try:
            page.fill("#text", "first, fills the backlog")
            page.click("#send")
            first = page.locator("#messages > li").first
            expect(first).to_have_attribute("data-status", "pending")
            page.wait_for_timeout(300)  # the gateway's backlog snapshot sees the queued job
            page.fill("#text", "second, refused for now")
            page.click("#send")
            second = page.locator("#messages > li").first
            expect(second).to_have_attribute("data-status", "retrying")
            expect(second.locator(".countdown")).to_contain_text("The service is busy right now. Retrying in")
            screenshot(page, "overloaded-countdown")
        finally:
            os.kill(stack.worker.pid, signal.SIGCONT)
        expect(first).to_have_attribute("data-status", "done")
        expect(second).to_have_attribute("data-status", "done", timeout=20_000)
        expect(second.locator(".label")).to_be_visible()
        assert watch.errors == []
    finally:
        page.context.close()
        stop_stack(stack)


def test_unauthenticated_is_explained_and_a_key_connects(
    browser: Browser, redis_server: RedisHandle, tmp_path: Path
) -> None:
    key = "rtai_" + secrets.token_urlsafe(24)
    keys = tmp_path / "keys"
    keys.write_text(f"{hashlib.sha256(key.encode()).hexdigest()} alice\n")
    stack = start_stack(
        redis_server, {"sentiment": "vader"}, RTAI_GW_AUTH__MODE="api_key", RTAI_GW_AUTH__API_KEYS_FILE=str(keys)
    )
    page, watch = new_page(browser)
    try:
        page.goto(stack.url)
        expect(page.locator("#conn")).to_have_attribute("data-state", "closed")
        expect(page.locator("#banner")).to_contain_text("Not signed in, or your key was refused.")
        expect(page.locator("#token")).to_be_focused()
        screenshot(page, "unauthenticated")

        page.keyboard.type("rtai_wrong_key")
        page.keyboard.press("Enter")
        expect(page.locator("#banner")).to_be_visible()
        expect(page.locator("#conn")).to_have_attribute("data-state", "closed")

        page.fill("#token", key)
        page.click("#token-save")
        expect(page.locator("#conn")).to_have_attribute("data-state", "open")
        expect(page.locator("#banner")).to_be_hidden()
        page.fill("#text", "Signed in and happy")
        page.keyboard.press("Enter")
        msg = page.locator("#messages > li").first
        expect(msg).to_have_attribute("data-status", "done")
        expect(msg.locator(".label")).to_have_text("positive")
        assert [e for e in watch.errors if "WebSocket connection" not in e] == []
    finally:
        page.context.close()
        stop_stack(stack)
