"""The web page at `/` against the scripted socket (tests/browser/scripted.py), no gateway: what the page shows for a
key the browser cannot send, and after the gateway ends an idle session; the page refers only to paths the Helm
chart's Ingress routes."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlparse

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from tests.browser.pages import ROOT
from tests.browser.scripted import ORIGIN, app_page

SERVER = """
window.serverScript = (sock, f) => {
  if (f.type === "hello") {
    welcome(sock, false);
    const idleMs = window.idleCloseMs;
    if (idleMs && sock.n === 0) setTimeout(() => sock.serverClose(1000, "idle timeout"), idleMs);
  }
  if (f.type === "infer") {
    const output = { label: "positive", scores: { neg: 0, neu: 0.2, pos: 0.8, compound: 0.6 } };
    sock.serverSend({ type: "result", id: f.id, seq: ++window.lastSeq, output });
  }
};
"""


@pytest.fixture
def browser_page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    page, watch = app_page(browser, SERVER + request.param)
    yield page
    assert watch.errors == []
    page.context.close()


STORED_BAD_KEY = 'sessionStorage.setItem("rtai.token", "my key");'


@pytest.mark.parametrize("browser_page", [STORED_BAD_KEY], indirect=True, ids=["stored-key"])
def test_a_stored_key_the_browser_cannot_send_is_explained(browser_page: Page) -> None:
    page = browser_page
    expect(page.locator("#conn")).to_have_attribute("data-state", "closed")
    expect(page.locator("#conn-text")).to_contain_text("Disconnected: the key has a character a browser cannot send")
    expect(page.locator("#banner")).to_contain_text("Not signed in, or your key was refused.")
    expect(page.locator("#token")).to_be_focused()
    assert page.evaluate("sockets.length") == 0


@pytest.mark.parametrize("browser_page", [""], indirect=True, ids=["no-key"])
def test_the_key_form_strips_bearer_and_refuses_what_cannot_be_sent(browser_page: Page) -> None:
    page = browser_page
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    page.click("#creds summary")
    page.fill("#token", "Bearer abc def")
    page.click("#token-save")
    expect(page.locator("#token-error")).to_contain_text("This key cannot be used: the key has a character")
    expect(page.locator("#token")).to_be_focused()
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")  # the connection is left as it was
    assert page.evaluate("sockets.length") == 1

    page.fill("#token", "Bearer rtai_abc")
    page.click("#token-save")
    expect(page.locator("#token-error")).to_be_empty()
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    assert page.evaluate("sockets.map((s) => s.protocols)") == [[], ["rtai.v1", "bearer.rtai_abc"]]
    assert page.evaluate("sessionStorage.getItem('rtai.token')") == "rtai_abc"


@pytest.mark.parametrize("browser_page", ["window.idleCloseMs = 100;"], indirect=True, ids=["idle-close"])
def test_after_the_idle_close_the_page_waits_and_connects_again_to_send(browser_page: Page) -> None:
    page = browser_page
    expect(page.locator("#conn")).to_have_attribute("data-state", "idle")
    expect(page.locator("#conn-text")).to_have_text("Idle: connects again when you send")
    page.wait_for_timeout(500)
    assert page.evaluate("sockets.length") == 1
    page.fill("#text", "Back after a break")
    page.keyboard.press("Enter")
    msg = page.locator("#messages > li").first
    expect(msg).to_have_attribute("data-status", "done")
    expect(msg.locator(".label")).to_have_text("positive")
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    assert page.evaluate("sockets.length") == 2


def _ingress_routes(path: str) -> bool:
    """Whether the chart's default Ingress (deploy/helm/gateway/values.yaml) routes `path` to the gateway."""
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "gateway" / "values.yaml").read_text())
    for host in values["ingress"]["hosts"]:
        for route in host["paths"]:
            p = route["path"]
            if path == p or (route["pathType"] == "Prefix" and path.startswith(p.rstrip("/") + "/")):
                return True
    return False


@pytest.mark.parametrize("browser_page", [""], indirect=True, ids=["no-key"])
def test_the_page_refers_only_to_paths_the_ingress_routes(browser_page: Page) -> None:
    page = browser_page
    expect(page.locator("#conn")).to_have_attribute("data-state", "open")
    urls = page.evaluate(
        """() => [...document.querySelectorAll("[href], [src]")].map((e) => e.href || e.src)
                 .concat(sockets.map((s) => s.url))"""
    )
    paths = sorted({urlparse(u).path for u in urls if urlparse(u).hostname == urlparse(ORIGIN).hostname})
    assert "/v1/tasks" in paths and "/v1/ws" in paths
    # Before: the footer linked to /readyz, a 404 behind the Ingress.
    assert [p for p in paths if not _ingress_routes(p)] == []
