"""The web page in headless Chromium against a real stack: every live task, streaming, XSS, phone, keyboard, axe."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.pages import (
    PHONE,
    ROOT,
    Stack,
    new_page,
    real_tasks,
    run_axe,
    screenshot,
    start_stack,
    stop_stack,
)
from tests.support.redis_server import RedisHandle

pytestmark = pytest.mark.timeout(240)

XSS = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 2</script>'


@pytest.fixture(scope="module")
def stack(redis_server: RedisHandle) -> Iterator[Stack]:
    s = start_stack(redis_server, real_tasks())
    yield s
    stop_stack(s)


def open_page(page: Page, stack: Stack) -> None:
    page.goto(stack.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    expect(page.locator("#task option")).to_have_count(len(stack.tasks))


def send(page: Page, task: str, text: str) -> None:
    page.select_option("#task", task)
    page.fill("#text", text)
    page.click("#send")


def test_each_live_task_shows_its_result(browser: Browser, stack: Stack) -> None:
    page, watch = new_page(browser, viewport={"width": 1100, "height": 900})
    open_page(page, stack)

    send(page, "sentiment", "I absolutely love this, it is wonderful!")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "done")
    expect(msg.locator(".label")).to_have_text("positive")
    expect(msg.locator('[role="meter"]')).to_have_count(4)  # neg, neu, pos, compound
    expect(msg.locator(".latency")).to_contain_text("ms")

    if "embed" in stack.tasks:
        send(page, "embed", "The quick brown fox jumps over the lazy dog.")
        msg = page.locator("#messages > li").first
        expect(msg).to_have_attribute("data-status", "done")
        expect(msg.locator(".dims")).to_contain_text("384 dimensions")
        expect(msg.locator(".dims")).to_contain_text("norm 1.000")
        expect(msg.locator(".vector")).to_contain_text("…")

    # Generation: tokens are on the page while the request is still streaming, before the final result.
    send(page, "generate", "Write one short sentence about the sea.")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "streaming", timeout=60_000)
    partial = msg.locator(".tokens").text_content() or ""
    assert partial, "no token shown while streaming"
    assert msg.get_attribute("data-status") in ("streaming", "done")
    expect(msg).to_have_attribute("data-status", "done", timeout=120_000)
    final = msg.locator(".tokens").text_content() or ""
    assert final.startswith(partial[: len(partial) // 2])
    assert len(final) >= len(partial)
    expect(msg.locator(".latency")).to_contain_text("first token")

    screenshot(page, "desktop-all-tasks")
    if os.environ.get("RTAI_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        page.set_viewport_size({"width": 1000, "height": 900})
        page.screenshot(path=str(ROOT / "docs" / "img" / "page.png"), full_page=True)
    assert watch.errors == []
    page.context.close()


def test_markup_in_text_is_shown_as_text(browser: Browser, stack: Stack) -> None:
    page, watch = new_page(browser)
    open_page(page, stack)
    send(page, "sentiment", XSS)
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "done")
    expect(msg.locator(".input")).to_have_text(XSS)
    assert page.locator("#messages img, #messages script").count() == 0
    assert page.evaluate("window.__xss") is None
    screenshot(page, "xss-as-text")
    assert watch.errors == []
    page.context.close()


def test_phone_viewport(browser: Browser, stack: Stack, axe_source: str) -> None:
    page, watch = new_page(browser, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    open_page(page, stack)
    send(page, "sentiment", "Pretty good phone experience")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "done")
    expect(msg.locator(".label")).to_be_visible()
    send(page, "generate", "Say hello.")
    expect(page.locator("#messages > li").first).to_have_attribute("data-status", "done", timeout=120_000)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"horizontal scrolling on a phone: {width}px"
    box = page.locator("#send").bounding_box()
    assert box is not None
    assert box["height"] >= 44  # a comfortable touch target
    violations = run_axe(page, axe_source)
    assert violations == [], json.dumps(violations, indent=1)
    screenshot(page, "phone")
    assert watch.errors == []
    page.context.close()


def test_keyboard_only(browser: Browser, stack: Stack) -> None:
    page, watch = new_page(browser)
    open_page(page, stack)
    kb = page.keyboard
    # Tab from the top of the page: skip link, then the task list, then the text box.
    kb.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    kb.press("Enter")  # the skip link moves focus to the text box
    assert page.evaluate("document.activeElement.id") == "text"
    kb.type("Keyboard users are very welcome here")
    kb.press("Enter")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "done")
    expect(msg.locator(".label")).to_have_text("positive")
    assert page.evaluate("document.activeElement.id") == "text"  # focus stays for the next message
    # Shift+Tab to the task list, choose `generate` with the arrow keys, back to the text box, send, Esc stops it.
    kb.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "task"
    values = page.eval_on_selector_all("#task option", "os => os.map(o => o.value)")
    now = values.index(page.eval_on_selector("#task", "s => s.value"))
    for _ in range(abs(values.index("generate") - now)):
        kb.press("ArrowDown" if values.index("generate") > now else "ArrowUp")
    assert page.eval_on_selector("#task", "s => s.value") == "generate"
    kb.press("Tab")
    assert page.evaluate("document.activeElement.id") == "text"
    kb.type("Tell me a very long story about a lighthouse keeper and the sea, with many details.")
    kb.press("Enter")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "streaming", timeout=60_000)
    kb.press("Escape")
    expect(msg).to_have_attribute("data-status", "error")
    expect(msg.locator(".status")).to_have_text("stopped")
    expect(msg.locator(".error-text")).to_contain_text("cancelled")
    # Every interactive element shows where the focus is.
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), "no visible focus indicator"
    screenshot(page, "keyboard")
    assert watch.errors == []
    page.context.close()


def test_no_serious_accessibility_violations(browser: Browser, stack: Stack, axe_source: str) -> None:
    page, watch = new_page(browser, viewport={"width": 1100, "height": 900})
    open_page(page, stack)
    assert run_axe(page, axe_source) == []  # empty page
    send(page, "sentiment", "Accessible and pleasant")
    expect(page.locator("#messages > li").first).to_have_attribute("data-status", "done")
    violations = run_axe(page, axe_source)
    assert violations == [], json.dumps(violations, indent=1)
    assert watch.errors == []
    page.context.close()
