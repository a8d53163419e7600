"""Cancelling with the browser module against the scripted socket (tests/browser/scripted.py): a cancel the gateway
refuses for now (rate_limited, with the request's id and `seq: null`) is asked again, not taken as the request's end;
a request that may run on the server is always cancelled there."""

from __future__ import annotations

from playwright.sync_api import Page

from tests.browser.scripted import run


def test_a_refused_cancel_of_an_accepted_request_is_sent_again(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer") {
            sock.serverSend({ type: "accepted", id: f.id, seq: 1, task: "t", deadline_ms: 0 });
            window.running = setTimeout(
              () => sock.serverSend({ type: "result", id: f.id, seq: 2, output: "ran to the end" }), 600);
          }
          if (f.type === "cancel" && sentOf("cancel").length === 1) return refuse(sock, f, "rate_limited");
          if (f.type === "cancel") {
            clearTimeout(window.running);
            sock.serverSend({ type: "error", id: f.id, seq: 2, code: "cancelled", message: "cancelled" });
          }
        };
        const c = await connected();
        const req = c.request("t", "x", { id: "g1" });
        await sleep(50);
        req.cancel();
        const outcome = await outcomeOf(req.done);
        return { outcome, cancels: sentOf("cancel").length };
        """,
    )
    # Before: the refusal was dropped, the cancel lost, and the request ran to its result.
    assert out == {"outcome": {"error": "cancelled"}, "cancels": 2}


def test_a_refused_cancel_of_a_queued_request_does_not_end_it_here(page: Page) -> None:
    out = run(
        page,
        """
        // The gateway's per-user queue: a request waits there until a cancel takes it out (it would run otherwise).
        // No timer races the client's second cancel: the queue holds the request until then, however late it comes.
        window.queued = new Set();
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer") window.queued.add(f.id);
          if (f.type === "cancel" && sentOf("cancel").length === 1) return refuse(sock, f, "rate_limited");
          if (f.type === "cancel" && window.queued.delete(f.id)) {
            sock.serverSend({ type: "error", id: f.id, seq: null, code: "cancelled", message: "cancelled" });
          }
        };
        // A client that never sent the cancel again would end with "timeout" after 5 s instead of hanging the test.
        const c = new RtaiClient("ws://rtai.test/v1/ws", { WebSocket: FakeSocket, defaultTimeoutMs: 5000 });
        c.connect();
        await sleep(30);
        const req = c.request("t", "x", { id: "g1" });
        await sleep(20);
        req.cancel();
        const outcome = await outcomeOf(req.done);
        return { outcome, cancels: sentOf("cancel").length, queued: [...window.queued] };
        """,
    )
    # Before: the request ended here with rate_limited, still queued on the server (where it would then run).
    assert out == {"outcome": {"error": "cancelled"}, "cancels": 2, "queued": []}


def test_a_cancelled_request_refused_by_the_server_ends_cancelled(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer") {
            sock.serverSend({ type: "error", id: f.id, seq: null, code: "overloaded", retry_after_ms: 50 });
          }
          if (f.type === "cancel") {
            sock.serverSend({ type: "error", id: f.id, seq: null, code: "invalid_request",
                              message: "no request with that id is in flight" });
          }
        };
        const c = await connected();
        const req = c.request("t", "x", { id: "g1" });
        req.cancel();  // before the refusal arrives: the server answers both frames, in order
        const outcome = await outcomeOf(req.done);
        await sleep(150);
        return { outcome, infers: sentOf("infer").length };
        """,
    )
    assert out == {"outcome": {"error": "cancelled"}, "infers": 1}


def test_a_request_refused_as_unavailable_then_accepted_is_cancelled_on_the_server(page: Page) -> None:
    # protocol.md: an `unavailable` sent because Redis's answer was lost may still run and send its frames.
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer") {
            sock.serverSend({ type: "error", id: f.id, seq: null, code: "unavailable", retry_after_ms: 300 });
            sock.serverSend({ type: "accepted", id: f.id, seq: 1, task: "t", deadline_ms: 0 });  // admitted after all
          }
          if (f.type === "cancel") sock.serverSend({ type: "error", id: f.id, seq: 2, code: "cancelled" });
        };
        const c = await connected();
        const req = c.request("g", "x", { id: "g1", stream: true });
        await sleep(50);
        req.cancel();  // the user presses Stop on a generation that runs
        const outcome = await outcomeOf(req.done);
        await sleep(500);  // past the retry delay: no copy is sent for a request that was accepted
        return { outcome, cancels: sentOf("cancel").length, infers: sentOf("infer").length };
        """,
    )
    # Before: ended here as "waiting to retry", never cancelled on the server; then a copy was sent anyway.
    assert out == {"outcome": {"error": "cancelled"}, "cancels": 1, "infers": 1}


def test_cancelling_a_request_waiting_to_retry_ends_it_and_still_cancels_it_on_the_server(page: Page) -> None:
    out = run(
        page,
        """
        window.serverScript = (sock, f) => {
          if (f.type === "hello") return welcome(sock, false);
          if (f.type === "infer") {
            sock.serverSend({ type: "error", id: f.id, seq: null, code: "unavailable", retry_after_ms: 5000 });
          }
        };
        const c = await connected();
        const req = c.request("t", "x", { id: "g1" });
        await sleep(50);
        req.cancel();
        const outcome = await outcomeOf(req.done);
        await sleep(50);
        return { outcome, cancels: sentOf("cancel").map(([, f]) => f.id) };
        """,
    )
    assert out == {"outcome": {"error": "cancelled"}, "cancels": ["g1"]}
