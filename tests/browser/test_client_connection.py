"""Connecting with the browser module against the scripted socket (tests/browser/scripted.py): connect() twice opens
one socket, close() closes every socket, a key the browser cannot send is a clear failure instead of a silent reconnect
loop, and the gateway's idle close (1000) leaves the client idle until it has something to send."""

from __future__ import annotations

from playwright.sync_api import Page

from tests.browser.scripted import run


def test_connect_while_waiting_to_reconnect_opens_one_socket_and_close_closes_it(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            welcome(sock, sock.n > 0);
            if (sock.n === 0) sock.serverClose(1012, "restart");
          }
        };
        const backoff = { baseMs: 400, maxMs: 400 };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, backoff });
        c.connect();
        await sleep(50);  // closed with 1012, the reconnect timer pending (200-400 ms)
        c.connect();      // e.g. an app calling connect() on `online`: reconnects now
        c.connect();      // and again while that socket opens: nothing
        await sleep(800);
        const state = c.state;
        c.close();
        await sleep(10);
        return { sockets: sockets.length, state, open: sockets.filter((s) => s.readyState !== 3).length };
        """,
    )
    # Before: connect() opened a second socket next to the timer's, and close() left one of them open.
    assert out == {"sockets": 2, "state": "open", "open": 0}


def test_connect_while_waiting_to_reconnect_does_not_lose_the_session(page: Page) -> None:
    out = run(
        page,
        """
        // The gateway: a resume on another socket closes the session's previous socket with 1008.
        window.holder = null;
        window.lastSeq = 1;  // after the accepted frame's seq
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            if (window.holder && window.holder !== sock && window.holder.readyState === 1) {
              window.holder.serverClose(1008, "session resumed on another connection");
            }
            window.holder = sock;
            welcome(sock, sock.n > 0);
            if (sock.n === 0) sock.serverClose(1012, "restart");
          }
          if (f.type === "infer" && sock.n === 0) {
            sock.serverSend({ type: "accepted", id: f.id, seq: 1, task: "t", deadline_ms: 0 });
          }
          if (f.type === "infer" && sock.n > 0) answer(sock, f);
        };
        const backoff = { baseMs: 100, maxMs: 100 };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, backoff });
        c.connect();
        await sleep(20);
        const outcome = c.request("t", "x", { id: "r1" }).done.then((r) => r.output, (e) => e.code);
        await sleep(20);  // closed with 1012, the reconnect timer pending (50-100 ms)
        c.connect();
        await sleep(400);
        const out = { state: c.state, outcome: await outcome, sockets: sockets.length };
        c.close();
        return out;
        """,
    )
    # Before: two sockets resumed the session, the gateway closed one with 1008, and the client gave up (closed).
    assert out == {"state": "open", "outcome": "x", "sockets": 2}


def test_a_key_the_browser_cannot_send_fails_at_once(page: Page) -> None:
    out = run(
        page,
        """
        // The browser's own WebSocket: a subprotocol with a space throws a SyntaxError.
        const c = new RtaiClient("ws://127.0.0.1:9/v1/ws", { token: "abc def", backoff: { baseMs: 20, maxMs: 40 } });
        const states = [];
        const refused = [];
        let reason = null;
        c.addEventListener("state", (e) => { states.push(e.detail.state); reason = e.detail.reason; });
        c.addEventListener("refused", (e) => refused.push(e.detail.code));
        c.connect();
        const code = await c.request("t", "x").done.then(() => null, (e) => e.code);
        await sleep(300);
        return { state: c.state, states, refused, code, reason };
        """,
    )
    # Before: an endless, silent reconnect loop ("reconnecting" every 10-40 ms).
    assert out == {
        "state": "closed",
        "states": ["connecting", "closed"],
        "refused": ["unauthenticated"],
        "code": "unauthenticated",  # made after the client closed: rejected with the reason it closed
        "reason": "the key has a character a browser cannot send (a space, quote, comma, slash, = or a non-ASCII "
        "letter)",
    }


def test_a_key_refused_by_the_constructor_ends_every_request_with_unauthenticated(page: Page) -> None:
    out = run(
        page,
        """
        // A browser stricter than the module's own check: the constructor throws for this key.
        class Strict extends FakeSocket {
          constructor(url, protocols) {
            if (protocols && protocols.some((p) => p.includes("~"))) throw new DOMException("bad", "SyntaxError");
            super(url, protocols);
          }
        }
        window.serverScript = (sock, f) => { if (f.type === "hello") welcome(sock, false); };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: Strict, token: "good" });
        c.connect();
        await sleep(30);
        const req = c.request("t", "x");  // pending while the key changes
        let detail = null;
        c.addEventListener("state", (e) => { detail = e.detail; });
        c.setToken("bad~key");
        const code = await req.done.then(() => null, (e) => e.code);
        await sleep(100);
        return { state: c.state, code, reason: detail.reason, sockets: sockets.length };
        """,
    )
    assert out == {
        "state": "closed",
        "code": "unauthenticated",
        "reason": "the browser refused to send this key",
        "sockets": 1,
    }


def test_a_url_the_constructor_refuses_is_fatal(page: Page) -> None:
    out = run(
        page,
        """
        const c = new RtaiClient("ws://rtai.test/v1/ws#fragment", { backoff: { baseMs: 20, maxMs: 40 } });
        const states = [];
        c.addEventListener("state", (e) => states.push(e.detail.state));
        c.connect();
        await sleep(200);
        return { states, reason: c.state === "closed" };
        """,
    )
    assert out == {"states": ["connecting", "closed"], "reason": True}


def test_bearer_prefix_is_stripped_from_keys(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => { if (f.type === "hello") welcome(sock, false); };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, token: "Bearer abc" });
        c.connect();
        await sleep(30);
        c.setToken("  bearer   rtai_x.y-z~1  ");
        await sleep(30);
        const out = { protocols: sockets.map((s) => s.protocols), state: c.state };
        c.close();
        return out;
        """,
    )
    assert out == {"protocols": [["rtai.v1", "bearer.abc"], ["rtai.v1", "bearer.rtai_x.y-z~1"]], "state": "open"}


def test_the_gateways_idle_close_leaves_the_client_idle_until_the_next_request(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            welcome(sock, false);
            if (sock.n === 0) setTimeout(() => sock.serverClose(1000, "idle timeout"), 50);
          }
          if (f.type === "infer") answer(sock, f);
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket });
        const states = [];
        c.addEventListener("state", (e) => states.push(e.detail.state));
        c.connect();
        await sleep(1000);
        const idle = { state: c.state, sockets: sockets.length };
        const r = await c.request("t", "back again").done;
        const out = { idle, output: r.output, states: [...states], sockets: sockets.length };
        c.close();
        return out;
        """,
    )
    # Before: a new socket (and session) at once after every idle close, forever.
    assert out == {
        "idle": {"state": "idle", "sockets": 1},
        "output": "back again",
        "states": ["connecting", "open", "idle", "connecting", "open"],
        "sockets": 2,
    }


def test_the_gateways_close_with_a_request_pending_reconnects_and_sends_it_again(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer" && sock.n === 0) return sock.serverClose(1000, "idle timeout");  // crossed on the wire
          if (f.type === "infer") answer(sock, f);
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, backoff: { baseMs: 20 } });
        c.connect();
        await sleep(30);
        const r = await c.request("t", "x", { id: "r1" }).done;
        const out = { output: r.output, infers: sentOf("infer").map(([n, f]) => [n, f.id]) };
        c.close();
        return out;
        """,
    )
    assert out == {"output": "x", "infers": [[0, "r1"], [1, "r1"]]}


def test_reconnect_now_connects_an_idle_client_but_not_a_closed_one(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") {
            welcome(sock, false);
            if (sock.n === 0) setTimeout(() => sock.serverClose(1000, "idle timeout"), 20);
          }
        };
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket });
        c.reconnectNow();  // never connected: nothing
        await sleep(20);
        const before = sockets.length;
        c.connect();
        await sleep(100);
        const idle = c.state;
        c.reconnectNow();
        await sleep(50);
        const reopened = c.state;
        c.close();
        c.reconnectNow();
        await sleep(50);
        return { before, idle, reopened, after: c.state, sockets: sockets.length };
        """,
    )
    assert out == {"before": 0, "idle": "idle", "reopened": "open", "after": "closed", "sockets": 2}
