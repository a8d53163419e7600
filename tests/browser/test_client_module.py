"""The browser module (`static/rtai.js`) in Chromium against a scripted socket: interleavings a real gateway produces
only under faults, played exactly. The module takes its WebSocket class as an option; here it is a small class whose
server side each test scripts in JavaScript. The page and the socket against a real gateway: test_page*.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route

from tests.browser.pages import ROOT, new_page

MODULE = ROOT / "services" / "gateway" / "src" / "rtai_gateway" / "static" / "rtai.js"
ORIGIN = "http://rtai.test"

# A WebSocket whose server side is `window.serverScript(sock, frame)`, called for each frame the client sends, and
# `window.serverOpen(sock)` when a connection opens. `sock.n` numbers the connections from 0.
FAKE_SOCKET = """
window.sockets = [];
window.sent = [];
window.FakeSocket = class {
  constructor(url, protocols) {
    this.url = url;
    this.readyState = 0;
    this.n = window.sockets.length;
    window.sockets.push(this);
    setTimeout(() => {
      if (this.readyState !== 0) return;
      this.readyState = 1;
      this.onopen && this.onopen();
      window.serverOpen && window.serverOpen(this);
    }, window.openDelayMs || 0);
  }
  send(data) {
    const frame = JSON.parse(data);
    window.sent.push([this.n, frame]);
    setTimeout(() => window.serverScript(this, frame), 0);
  }
  close(code, reason) { this.serverClose(code || 1000, reason || ""); }
  serverSend(frame) {
    if (this.readyState === 1) this.onmessage && this.onmessage({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose && this.onclose({ code, reason }), 0);
  }
};
window.welcome = (sock, resumed) =>
  sock.serverSend({ type: "welcome", session: "s1", resumed, gateway: "g1", protocol: "1" });
window.sleep = (ms) => new Promise((r) => setTimeout(r, ms));
"""


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    p, _ = new_page(browser)

    def serve(route: Route) -> None:
        if route.request.url.endswith("/rtai.js"):
            route.fulfill(body=MODULE.read_text(), content_type="text/javascript")
        else:
            route.fulfill(body="<!doctype html><title>rtai.js</title>", content_type="text/html")

    p.route(f"{ORIGIN}/**", serve)
    p.goto(f"{ORIGIN}/")
    p.evaluate(FAKE_SOCKET)
    yield p
    p.context.close()


def run(page: Page, body: str) -> Any:
    """Run `body` (an async function body with `RtaiClient` in scope) in the page; returns what it returns."""
    return page.evaluate(
        f"""async () => {{
            const {{ RtaiClient }} = await import("{ORIGIN}/rtai.js");
            {body}
        }}"""
    )


def test_a_refused_copy_of_an_accepted_request_does_not_end_it(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, sock.n > 0);
          if (f.type !== "infer") return;
          if (sock.n === 0) {
            sock.serverSend({ type: "accepted", id: f.id, seq: 1, task: "t", deadline_ms: 0 });
            sock.serverClose(1012, "restart");
          } else {
            // The copy sent after the reconnect: refused (no live worker for a moment), while the request runs.
            const refused = { type: "error", id: f.id, seq: null, code: "unavailable", retry_after_ms: 50 };
            sock.serverSend(refused);
            sock.serverSend({ type: "result", id: f.id, seq: 2, output: { ok: true } });
          }
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, backoff: { baseMs: 20 } });
        c.connect();
        try {
          const r = await c.request("t", "x").done;
          return { output: r.output };
        } catch (e) {
          return { error: e.code };
        }
        """,
    )
    assert out == {"output": {"ok": True}}


def test_a_server_that_closes_after_every_welcome_gets_growing_delays(page: Page) -> None:
    connections = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            welcome(sock, sock.n > 0);
            sock.serverClose(1011, "replay failed");
          }
        };
        const backoff = { baseMs: 20, maxMs: 400 };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, backoff });
        c.connect();
        await sleep(1500);
        c.close();
        return sockets.length;
        """,
    )
    # Delays 10-20, 20-40, 40-80, 80-160, then 200-400 ms: at most ~8 connections in 1.5 s. Before, every welcome
    # reset the count and the client reconnected every 10-20 ms (~70 connections).
    assert connections <= 10, connections


def test_reconnect_now_while_a_socket_is_opening_does_not_open_a_second_one(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            welcome(sock, sock.n > 0);
            if (sock.n === 0) sock.serverClose(1012, "restart");
          }
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, backoff: { baseMs: 60000 } });
        c.connect();
        await sleep(100);  // closed; the backoff timer waits 30-60 s
        window.openDelayMs = 100;
        c.reconnectNow();  // the browser came back online: a socket starts opening
        c.reconnectNow();  // and again, before it opened
        await sleep(400);
        const state = c.state;
        c.close();
        return { sockets: sockets.length, state };
        """,
    )
    assert out == {"sockets": 2, "state": "open"}


def test_a_request_that_timed_out_is_cancelled_on_the_server(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer") sock.serverSend({ type: "accepted", id: f.id, seq: 1, task: "t", deadline_ms: 0 });
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, graceMs: 50 });
        c.connect();
        await sleep(50);
        let code = null;
        try {
          await c.request("t", "x", { id: "slow", deadlineMs: 100 }).done;
        } catch (e) {
          code = e.code;
        }
        await sleep(50);
        return { code, cancels: sent.filter(([, f]) => f.type === "cancel").map(([, f]) => f.id) };
        """,
    )
    assert out == {"code": "timeout", "cancels": ["slow"]}


def test_a_request_over_the_gateways_frame_limit_is_refused_without_sending_it(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            return sock.serverSend({ type: "welcome", session: "s1", resumed: false, max_frame_bytes: 200 });
          }
          if (f.type === "infer") sock.serverSend({ type: "result", id: f.id, seq: 1, output: f.input.length });
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket });
        c.connect();
        await sleep(50);
        let code = null;
        try {
          await c.request("t", "x".repeat(300)).done;
        } catch (e) {
          code = e.code;
        }
        const small = await c.request("t", "small").done;
        return { code, small: small.output, sent: sent.filter(([, f]) => f.type === "infer").length };
        """,
    )
    assert out == {"code": "invalid_request", "small": 5, "sent": 1}


def test_a_request_made_before_the_welcome_is_checked_against_its_frame_limit(page: Page) -> None:
    out = run(
        page,
        """
        window.openDelayMs = 50;
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            return sock.serverSend({ type: "welcome", session: "s1", resumed: false, max_frame_bytes: 200 });
          }
          if (f.type === "infer") sock.serverSend({ type: "result", id: f.id, seq: 1, output: f.input.length });
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket });
        c.connect();
        const big = c.request("t", "x".repeat(300)).done.then(() => null, (e) => e.code);  // before the welcome
        const small = await c.request("t", "small").done;
        return { big: await big, small: small.output, sent: sent.filter(([, f]) => f.type === "infer").length };
        """,
    )
    assert out == {"big": "invalid_request", "small": 5, "sent": 1}


def test_a_request_that_timed_out_while_disconnected_is_cancelled_once_the_session_resumes(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            welcome(sock, sock.n > 0);
            return;
          }
          if (f.type === "infer" && sock.n === 0) {
            sock.serverSend({ type: "accepted", id: f.id, seq: 1, task: "t", deadline_ms: 0 });
            setTimeout(() => sock.serverClose(1012, "restart"), 50);
          }
        };
        const backoff = { baseMs: 1000, maxMs: 1000 };  // reconnects 0.5-1 s after the drop
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, graceMs: 100, backoff });
        c.connect();
        await sleep(30);
        let code = null;
        try {
          await c.request("t", "x", { id: "slow", deadlineMs: 200 }).done;  // times out while disconnected
        } catch (e) {
          code = e.code;
        }
        await sleep(1300);
        return { code, cancels: sent.filter(([, f]) => f.type === "cancel").map(([n, f]) => [n, f.id]) };
        """,
    )
    assert out == {"code": "timeout", "cancels": [[1, "slow"]]}
