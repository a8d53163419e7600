"""A scripted WebSocket for the browser tests: the module (`static/rtai.js`) or the whole page runs in Chromium against
a socket whose server side each test scripts in JavaScript, for the interleavings a real gateway produces only under
faults, played exactly. Nothing listens on the network: every URL of the origin is answered by a Playwright route."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlparse

from playwright.sync_api import Browser, Page, Route

from tests.browser.pages import ROOT, PageWatch, new_page

STATIC = ROOT / "services" / "gateway" / "src" / "rtai_gateway" / "static"
MODULE = STATIC / "rtai.js"
ORIGIN = "http://rtai.test"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

# A WebSocket whose server side is `window.serverScript(sock, frame)`, called for each frame the client sends, and
# `window.serverOpen(sock)` when a connection opens. `sock.n` numbers the connections from 0; `sock.protocols` is
# what the client offered. Helpers: `sentOf(type)`, `outcomeOf(req.done)`, `refuse(sock, f, code)`, `answer(sock, f)`,
# `connected(options)` (a client on the fake socket, given 30 ms to get its welcome).
FAKE_SOCKET = """
window.sockets = [];
window.sent = [];
window.FakeSocket = class {
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols === undefined ? [] : [].concat(protocols);
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
window.sentOf = (type) => window.sent.filter(([, f]) => f.type === type);
window.outcomeOf = (done) => done.then((r) => ({ result: r.output }), (e) => ({ error: e.code }));
window.refuse = (sock, f, code, retryAfterMs = 50) =>
  sock.serverSend({ type: "error", id: f.id, seq: null, code, message: code, retry_after_ms: retryAfterMs });
window.lastSeq = 0;  // the server's: answer() numbers its results from here
window.answer = (sock, f) => sock.serverSend({ type: "result", id: f.id, seq: ++window.lastSeq, output: f.input });
window.connected = async (options = {}) => {
  const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, ...options });
  c.connect();
  await sleep(30);
  return c;
};
"""

TASKS = {"tasks": [{"task": "sentiment", "model": "vader", "streaming": False, "max_input_chars": 5000, "workers": 1}]}


def _serve(route: Route, index: str) -> None:
    path = urlparse(route.request.url).path
    if path == "/v1/tasks":
        route.fulfill(body=json.dumps(TASKS), content_type="application/json")
    elif path == "/":
        route.fulfill(body=index, content_type="text/html")
    else:
        file = STATIC / path.rsplit("/", 1)[-1]
        route.fulfill(body=file.read_text(), content_type=TYPES.get(file.suffix, "text/plain"))


def module_page(browser: Browser) -> Page:
    """A blank page of the origin with the fake socket defined: tests import the module and build clients."""
    p, _ = new_page(browser)
    p.route(f"{ORIGIN}/**", lambda route: _serve(route, "<!doctype html><title>rtai.js</title>"))
    p.goto(f"{ORIGIN}/")
    p.evaluate(f"() => {{ {FAKE_SOCKET} }}")  # a function body: Playwright would call a function it evaluates to
    return p


def app_page(browser: Browser, script: str) -> tuple[Page, PageWatch]:
    """The web page at `/` (index.html, app.js, rtai.js) with the fake socket as the browser's WebSocket. `script`
    runs before the page's own code: it defines `window.serverScript` (and may fill sessionStorage)."""
    p, watch = new_page(browser)
    p.context.add_init_script(FAKE_SOCKET + "window.WebSocket = window.FakeSocket;\n" + script)
    p.route(f"{ORIGIN}/**", lambda route: _serve(route, (STATIC / "index.html").read_text()))
    p.goto(f"{ORIGIN}/")
    return p, watch


def run(page: Page, body: str) -> Any:
    """Run `body` (an async function body with `RtaiClient` in scope) in the page; returns what it returns."""
    return page.evaluate(
        f"""async () => {{
            const {{ RtaiClient }} = await import("{ORIGIN}/static/rtai.js");
            window.RtaiClient = RtaiClient;  // for the helpers above (`connected`)
            {body}
        }}"""
    )
