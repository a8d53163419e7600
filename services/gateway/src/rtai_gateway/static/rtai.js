// rtai browser client: a dependency-free ES module (docs/browser-client.md).
//
//   import { RtaiClient } from "/static/rtai.js";
//   const client = new RtaiClient(wsUrlFor(location));
//   client.addEventListener("state", (e) => console.log(e.detail.state));
//   client.connect();
//   const req = client.request("generate", "Hello", { stream: true, onChunk: (c) => out.append(c.data) });
//   const result = await req.done;   // the `result` frame; rejects with RtaiError (err.code) on an `error` frame
//
// Reconnects with jittered exponential backoff, resumes the session from the last seq seen (missed chunks and results
// are replayed by the server), sends unfinished requests again under the same id (the server never runs an id twice),
// and retries `overloaded` / `rate_limited` / `unavailable` refusals after the server's retry_after_ms. After the
// server ends an idle session (close 1000 with nothing pending) it stays idle and connects again on the next request.

export const FATAL_CLOSE_CODES = new Set([1008, 1009]);
const RETRY_CODES = new Set(["overloaded", "rate_limited", "unavailable"]);
// A connection that stayed up this long starts the reconnect attempt count again at its next drop; a server that
// welcomes and then closes every time gets growing delays instead of a reconnect every few hundred milliseconds.
const STABLE_MS = 5000;
// A subprotocol is an RFC 7230 token: the WebSocket constructor throws (SyntaxError) on anything else (a space...).
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** An `error` frame that ended a request, or a client-side failure (code "timeout", "connection_lost"). */
export class RtaiError extends Error {
  constructor(code, message, frame = null) {
    super(message || code);
    this.name = "RtaiError";
    this.code = code;
    this.frame = frame;
    this.retryAfterMs = frame && frame.retry_after_ms != null ? frame.retry_after_ms : null;
  }
}

/** Delay before reconnect attempt `attempt` (0-based): random in [cap/2, cap], cap = min(maxMs, baseMs * factor^n). */
export function backoffDelay(attempt, { baseMs = 250, factor = 2, maxMs = 10000 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, baseMs * Math.pow(factor, Math.min(attempt, 64)));
  return cap / 2 + random() * (cap / 2);
}

/** The gateway's WebSocket URL for a page served by the gateway (ws: for http:, wss: for https:). */
export function wsUrlFor(loc, path = "/v1/ws") {
  return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + path;
}

/** A key as users paste it: trimmed, without a leading "Bearer " (null when empty). */
export function normalizeToken(token) {
  const t = token == null ? "" : String(token).trim().replace(/^bearer\s+/i, "");
  return t || null;
}

/** Why `token` cannot be offered as the `bearer.<token>` subprotocol (null when it can). */
export function tokenProblem(token) {
  if (token == null || TOKEN_CHARS.test(token)) return null;
  return "the key has a character a browser cannot send (a space, quote, comma, slash, = or a non-ASCII letter)";
}

let counter = 0;
function newId() {
  counter += 1;
  const rand = Math.floor(Math.random() * 0xffffffff).toString(36);
  return `web-${Date.now().toString(36)}-${rand}-${counter}`;
}

function urlOk(url) {
  try {
    const u = new URL(url);
    return /^(wss?|https?):$/.test(u.protocol) && !u.hash;
  } catch {
    return false;
  }
}

export class RtaiClient extends EventTarget {
  /**
   * @param {string} url  ws(s)://host/v1/ws
   * @param {object} [opts]
   * @param {object} [opts.backoff]  {baseMs, factor, maxMs, maxAttempts}; maxAttempts defaults to Infinity
   * @param {number} [opts.retries]  how often a refused (never accepted) request is sent again (default 5)
   * @param {number} [opts.defaultTimeoutMs]  client-side limit of a request without a deadline (default 60000)
   * @param {string} [opts.token]  API key or JWT, offered as the `bearer.<token>` subprotocol next to `rtai.v1` (a
   *   leading "Bearer " is dropped)
   * @param {Function} [opts.WebSocket]  a WebSocket implementation (default: the global one)
   */
  constructor(url, opts = {}) {
    super();
    this.url = url;
    this.backoff = { baseMs: 250, factor: 2, maxMs: 10000, maxAttempts: Infinity, ...(opts.backoff || {}) };
    this.retries = opts.retries ?? 5;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 60000;
    this.graceMs = opts.graceMs ?? 5000;
    this.token = normalizeToken(opts.token);
    this.WebSocketImpl = opts.WebSocket || globalThis.WebSocket;
    this.session = null;
    this.lastSeq = 0;
    this.gateway = "";
    this.maxFrameBytes = 0; // from the welcome: a larger frame would close the socket (1009) and end every request
    this.state = "idle";
    this.reconnects = 0;
    this._ws = null; // the current socket; every socket not closed yet is in _sockets, for close()
    this._sockets = new Set();
    this._wanted = false; // connect() called, close() not: an idle client connects again on the next request
    this._fatalError = null; // why the client closed by itself (a refused key): what later requests reject with
    this._gen = 0;
    this._attempt = 0;
    this._timer = null;
    this._closing = false;
    this._calls = new Map();
    this._cancelLater = new Set(); // requests given up on while disconnected: cancelled once the session resumes
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...extra } }));
  }

  /** Open the socket and keep it open until close(). Does nothing while a socket is open or opening; while waiting to
   * reconnect it reconnects now. */
  connect() {
    this._wanted = true;
    this._closing = false;
    this._fatalError = null;
    if (this.state === "idle" || this.state === "closed") this._open();
    else this.reconnectNow();
  }

  /** Close normally (1000): the server cancels this session's unfinished requests. */
  close() {
    this._closing = true;
    this._wanted = false;
    this._fatalError = null;
    clearTimeout(this._timer);
    this._closeSockets(1000, "bye");
    this._failAll(new RtaiError("connection_lost", "the client was closed"));
    this._setState("closed", { reason: "closed by the page" });
  }

  /** Use another token (or null for none) and connect again with it, keeping the session if the server allows. */
  setToken(token) {
    this.token = normalizeToken(token);
    clearTimeout(this._timer);
    this._closing = false;
    this._wanted = true;
    this._fatalError = null;
    this._attempt = 0;
    this._closeSockets(4000, "new credentials");
    this._open();
  }

  /** Reconnect now instead of waiting for the backoff timer (e.g. when the browser comes back online), or connect an
   * idle client. Does nothing while a socket is open or opening, or after close() or a fatal close. */
  reconnectNow() {
    if (this._ws !== null || !this._wanted || !(this.state === "reconnecting" || this.state === "idle")) return;
    clearTimeout(this._timer);
    this._open();
  }

  _closeSockets(code, reason) {
    const sockets = [...this._sockets];
    this._sockets.clear();
    this._ws = null; // their close events are ignored from now on
    for (const ws of sockets) ws.close(code, reason);
  }

  /** A failure that another attempt would only repeat: end every request and stay closed. */
  _fatal(code, message, extra = {}) {
    this._fatalError = new RtaiError(code, message, extra.frame || null);
    this._failAll(this._fatalError);
    this._setState("closed", { code, message, reason: message, ...extra });
  }

  _open() {
    if (this.state !== "reconnecting") this._setState("connecting");
    const problem = tokenProblem(this.token);
    if (problem) return this._refuseToken(problem);
    let ws;
    try {
      // Browsers cannot set headers on a WebSocket: the token travels as a subprotocol the server never echoes.
      ws = this.token
        ? new this.WebSocketImpl(this.url, ["rtai.v1", `bearer.${this.token}`])
        : new this.WebSocketImpl(this.url);
    } catch (err) {
      // The same arguments would throw again: reconnecting in a loop would only hide the cause. (The browser's message
      // quotes the subprotocol, so the key's own error does not repeat it.)
      if (this.token && err.name === "SyntaxError" && urlOk(this.url)) {
        return this._refuseToken("the browser refused to send this key");
      }
      return this._fatal("connection_lost", `cannot open a WebSocket to ${this.url}: ${err.message || err}`);
    }
    this._ws = ws;
    this._sockets.add(ws);
    let welcomedAt = null;
    let refusal = null;
    ws.onopen = () => {
      if (this._ws !== ws) return; // replaced (new credentials) while it opened
      const hello = { type: "hello" };
      if (this.session) {
        hello.session = this.session;
        hello.last_seq = this.lastSeq;
      }
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame.type === "welcome") {
        welcomedAt = Date.now();
        this._onWelcome(frame);
      } else if (welcomedAt === null && frame.type === "error" && frame.id == null) {
        refusal = frame; // e.g. unauthenticated, just before a 1008 close
        this.dispatchEvent(new CustomEvent("refused", { detail: frame }));
      } else {
        this._dispatch(frame);
      }
    };
    ws.onclose = (ev) => {
      this._sockets.delete(ws);
      if (this._ws !== ws) return;
      this._ws = null;
      if (this._closing) return;
      if (FATAL_CLOSE_CODES.has(ev.code)) {
        const code = refusal ? refusal.code : "connection_lost";
        const message = refusal ? refusal.message : `closed by the server (${ev.code} ${ev.reason})`;
        this._fatal(code, message, { closeCode: ev.code, reason: ev.reason, frame: refusal });
        return;
      }
      if (welcomedAt !== null && Date.now() - welcomedAt >= STABLE_MS) this._attempt = 0;
      if (ev.code === 1000 && this._calls.size === 0) {
        // The server ended the session normally (its idle timeout): connect again when there is something to send,
        // not at once (an idle tab would hold a socket, and start a session, forever).
        this._setState("idle", { closeCode: ev.code, reason: ev.reason || "closed by the server" });
        return;
      }
      this._scheduleReconnect(ev.code, ev.reason);
    };
  }

  _refuseToken(message) {
    // Like the server's refusal of a key (event `refused`, then state `closed`), so a page asks for another one.
    const frame = { type: "error", id: null, seq: null, code: "unauthenticated", message };
    this.dispatchEvent(new CustomEvent("refused", { detail: frame }));
    this._fatal("unauthenticated", message, { frame });
  }

  _scheduleReconnect(code, reason) {
    if (this._attempt >= this.backoff.maxAttempts) {
      this._failAll(new RtaiError("connection_lost", "could not reconnect"));
      this._setState("closed", { closeCode: code, reason: "gave up reconnecting" });
      return;
    }
    const delayMs = backoffDelay(this._attempt, this.backoff);
    this._attempt += 1;
    this._setState("reconnecting", { attempt: this._attempt, delayMs, closeCode: code, reason });
    this._timer = setTimeout(() => this._open(), delayMs);
  }

  _onWelcome(w) {
    const wasConnected = this.session !== null;
    if (!w.resumed) this.lastSeq = 0;
    this.session = w.session;
    this.gateway = w.gateway || "";
    this.maxFrameBytes = w.max_frame_bytes || 0;
    this._gen += 1;
    if (wasConnected) this.reconnects += 1;
    this._setState("open", { resumed: !!w.resumed, gateway: this.gateway });
    this.dispatchEvent(new CustomEvent("welcome", { detail: w }));
    const cancels = this._cancelLater;
    this._cancelLater = new Set();
    if (w.resumed) for (const id of cancels) this._send({ type: "cancel", id });
    for (const call of this._calls.values()) {
      if (call.done) continue;
      if (!w.resumed) {
        if (call.nextIndex > 0) {
          this._finish(call, new RtaiError("session_lost", "the session expired while this request was streaming"));
          continue;
        }
        // A new session runs it afresh, its budget counted from this copy's receipt: ask only for what is left of it.
        // (A request waiting to retry is trimmed when its retry is due.)
        if (!call.waiting && !this._trimBudget(call)) {
          const message = "the request's deadline passed while the client reconnected";
          this._finish(call, new RtaiError("deadline_exceeded", message));
          continue;
        }
        call.accepted = false;
      }
      this._sendCall(call);
      if (call.cancelRequested) this._send({ type: "cancel", id: call.id });
    }
  }

  _dispatch(f) {
    if (f.seq != null) {
      if (f.seq <= this.lastSeq) return; // already seen
      this.lastSeq = f.seq;
    }
    this.dispatchEvent(new CustomEvent("frame", { detail: f }));
    if (f.id == null) return;
    const call = this._calls.get(f.id);
    if (!call || call.done) return;
    if (f.type === "accepted") {
      call.accepted = true;
      if (call.waiting) {
        // Refused with `unavailable` (Redis's answer was lost) and admitted after all: it runs, no copy is needed.
        call.waiting = false;
        clearTimeout(call.retryTimer);
      }
      if (call.onAccepted) call.onAccepted(f);
    } else if (f.type === "chunk") {
      if (f.index < call.nextIndex) return; // a repeat
      call.nextIndex = f.index + 1;
      if (call.onChunk) call.onChunk(f);
    } else if (f.type === "result") {
      this._finish(call, null, f);
    } else if (f.type === "error") {
      this._onError(call, f);
    }
  }

  _onError(call, f) {
    const refusal = f.seq == null && RETRY_CODES.has(f.code);
    const delayMs = (f.retry_after_ms ?? this.backoff.baseMs) * (1 + 0.2 * Math.random());
    if (call.cancelRequested && f.seq == null && f.code !== "cancelled") {
      if (refusal) {
        // The cancel (or a copy of the request) was refused for now, not the request ended: ask again later.
        if (call.cancelTimer == null && Date.now() + delayMs < call.deadline) {
          call.cancelTimer = setTimeout(() => {
            call.cancelTimer = null;
            this._send({ type: "cancel", id: call.id });
          }, delayMs);
        }
        return;
      }
      if (f.code === "invalid_request") {
        // "No request with that id is in flight": its refusal came first, nothing runs.
        this._finish(call, new RtaiError("cancelled", "cancelled by the client", f));
        return;
      }
    }
    if (refusal && (call.accepted || call.nextIndex > 0)) {
      // A copy sent again after a reconnect was refused; the request itself was accepted and runs. Send the copy
      // again later, in case the server lost the request.
      if (call.resendTimer == null) {
        call.resendTimer = setTimeout(() => {
          call.resendTimer = null;
          call.sentGen = -1;
          this._sendCall(call);
        }, delayMs);
      }
      return;
    }
    if (refusal && call.attempt < call.retries && Date.now() + delayMs < call.deadline) {
      call.attempt += 1;
      call.waiting = true;
      this.dispatchEvent(new CustomEvent("retry", { detail: { id: call.id, code: f.code, delayMs, attempt: call.attempt } }));
      if (call.onRetry) call.onRetry({ code: f.code, message: f.message, delayMs, attempt: call.attempt });
      call.retryTimer = setTimeout(() => {
        call.waiting = false;
        call.sentGen = -1;
        this._trimBudget(call); // none left: sent with 1 ms, and the server answers `deadline_exceeded`
        this._sendCall(call);
      }, delayMs);
      return;
    }
    this._finish(call, new RtaiError(f.code, f.message, f));
  }

  /** Set the copy's deadline_ms to what is left of the request's own budget (a copy sent again must not ask for the
   * whole of it; at least 1). False if nothing is left. A request without a deadline keeps none. */
  _trimBudget(call) {
    if (call.budgetMs == null) return true;
    const left = Math.floor(call.budgetMs - (Date.now() - call.started));
    call.options.deadline_ms = Math.max(1, left);
    return left > 0;
  }

  _finish(call, err, result) {
    if (call.done) return;
    call.done = true;
    clearTimeout(call.timer);
    clearTimeout(call.retryTimer);
    clearTimeout(call.resendTimer);
    clearTimeout(call.cancelTimer);
    this._calls.delete(call.id);
    if (err) call.reject(err);
    else call.resolve(result);
  }

  _failAll(err) {
    for (const call of [...this._calls.values()]) this._finish(call, err);
  }

  _send(frame) {
    if (!this._ws || this.state !== "open" || this._ws.readyState !== 1) return false;
    this._ws.send(JSON.stringify(frame));
    return true;
  }

  _sendCall(call) {
    if (call.done || call.waiting || call.sentGen === this._gen || this.state !== "open") return;
    const frame = { type: "infer", id: call.id, task: call.task, input: call.input };
    if (Object.keys(call.options).length) frame.options = call.options;
    const tooBig = this._tooBig(frame);
    if (tooBig) {
      this._finish(call, tooBig); // a larger frame would close the socket (1009) and fail every request on it
      return;
    }
    if (this._send(frame)) {
      call.sentGen = this._gen;
      call.everSent = true;
    }
  }

  _tooBig(frame) {
    if (!(this.maxFrameBytes > 0)) return null;
    const size = new TextEncoder().encode(JSON.stringify(frame)).length;
    if (size <= this.maxFrameBytes) return null;
    const message = `the request is ${size} bytes; the gateway takes frames of at most ${this.maxFrameBytes}`;
    return new RtaiError("invalid_request", message);
  }

  /**
   * Send a request. Returns {id, done, cancel}: `done` resolves with the `result` frame ({id, seq, output}) or
   * rejects with RtaiError. While disconnected the request waits and is sent once the socket is back.
   * @param {object} [o] {id, stream, deadlineMs, maxNewTokens, retries, onChunk(frame), onAccepted(frame), onRetry(info)}
   */
  request(task, input, o = {}) {
    const id = o.id || newId();
    if (this._calls.has(id)) throw new Error(`request id ${id} is already in use`);
    const options = {};
    if (o.stream) options.stream = true;
    if (o.deadlineMs != null) options.deadline_ms = o.deadlineMs;
    if (o.maxNewTokens != null) options.max_new_tokens = o.maxNewTokens;
    const limitMs = o.deadlineMs != null ? o.deadlineMs + this.graceMs : this.defaultTimeoutMs;
    const call = {
      id, task, input, options, budgetMs: o.deadlineMs ?? null, started: Date.now(), deadline: Date.now() + limitMs,
      retries: o.retries ?? this.retries, attempt: 0, accepted: false, nextIndex: 0, done: false, waiting: false,
      sentGen: -1, everSent: false, cancelRequested: false,
      onChunk: o.onChunk, onAccepted: o.onAccepted, onRetry: o.onRetry,
    };
    const done = new Promise((resolve, reject) => {
      call.resolve = resolve;
      call.reject = reject;
    });
    call.timer = setTimeout(() => {
      // Given up on here: if it may still run on the server, stop it there too (it would hold a worker for nothing).
      if (call.everSent && !this._send({ type: "cancel", id })) this._cancelLater.add(id);
      this._finish(call, new RtaiError("timeout", `no answer within ${Math.round(limitMs / 1000)} s`));
    }, limitMs);
    this._calls.set(id, call);
    if (this.state === "closed" || (this.state === "idle" && !this._wanted)) {
      this._finish(call, this._fatalError || new RtaiError("connection_lost", "not connected: call connect() first"));
    } else if (this.state === "idle") {
      this._open(); // the server ended the idle session: a new socket, and the request is sent on its welcome
    } else {
      this._sendCall(call);
    }
    return { id, done, cancel: () => this.cancel(id) };
  }

  /** Ask the server to stop a request; its `done` then rejects with code "cancelled" (or resolves with a result that
   * came first). A refused cancel is sent again after the server's retry_after_ms. */
  cancel(id) {
    const call = this._calls.get(id);
    if (!call || call.cancelRequested) return;
    call.cancelRequested = true;
    if (call.waiting || !call.everSent) {
      // Never sent, or refused and waiting to retry: nothing should run for it, so end it here. An `unavailable`
      // refusal may be wrong about that (Redis's answer was lost), so a request ever sent is cancelled there too.
      if (call.everSent && !this._send({ type: "cancel", id })) this._cancelLater.add(id);
      this._finish(call, new RtaiError("cancelled", "cancelled by the client"));
      return;
    }
    this._send({ type: "cancel", id });
  }

  /** The live tasks: GET /v1/tasks on the gateway's HTTP origin. */
  async tasks() {
    const u = new URL(this.url);
    u.protocol = u.protocol === "wss:" ? "https:" : "http:";
    u.pathname = "/v1/tasks";
    const r = await fetch(u.toString(), { headers: { Accept: "application/json" } });
    if (!r.ok) throw new RtaiError("unavailable", `GET /v1/tasks: HTTP ${r.status}`);
    return (await r.json()).tasks;
  }
}
