// The rtai web page. Every piece of text from the user or the server goes into the DOM as text (textContent),
// never as HTML: a message such as `<img src=x onerror=alert(1)>` is shown, not run.
import { RtaiClient, normalizeToken, tokenProblem, wsUrlFor } from "./rtai.js";

const $ = (id) => document.getElementById(id);
const form = $("composer");
const taskSel = $("task");
const textBox = $("text");
const formError = $("form-error");
const list = $("messages");
const template = $("message-template");
const conn = $("conn");
const connText = $("conn-text");

const ERROR_TEXT = {
  overloaded: "The service is busy right now.",
  rate_limited: "You are sending too fast.",
  unavailable: "The service is temporarily unavailable.",
  unauthenticated: "Not signed in, or your key was refused.",
  unknown_task: "No worker serves this task right now.",
  invalid_request: "The request was refused.",
  deadline_exceeded: "No answer arrived in time.",
  cancelled: "Stopped.",
  failed: "The request failed on the server.",
  duplicate_request: "This request is already running in another session.",
  internal: "Something went wrong on the server.",
  timeout: "No answer arrived in time.",
  connection_lost: "The connection was lost.",
  session_lost: "The session expired while this answer was streaming; send it again.",
};

const TOKEN_KEY = "rtai.token";
const banner = $("banner");
const client = new RtaiClient(wsUrlFor(location), { token: sessionStorage.getItem(TOKEN_KEY) });
window.rtai = client; // for the console and the browser tests
const tasks = new Map();
let reconnectTimer = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

function fmtMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// ---- connection state ------------------------------------------------------------------------------------------

function showState({ state, delayMs, attempt, resumed, reason, closeCode }) {
  conn.dataset.state = state;
  clearInterval(reconnectTimer);
  if (state === "open") {
    connText.textContent = resumed ? "Connected (resumed)" : "Connected";
    loadTasks();
  } else if (state === "connecting") {
    connText.textContent = "Connecting…";
  } else if (state === "reconnecting" && delayMs != null) {
    const until = performance.now() + delayMs;
    const tick = () => {
      const left = Math.max(0, until - performance.now());
      connText.textContent = `Reconnecting in ${(left / 1000).toFixed(1)} s (attempt ${attempt})`;
    };
    tick();
    reconnectTimer = setInterval(tick, 200);
  } else if (state === "reconnecting") {
    connText.textContent = "Reconnecting…";
  } else if (state === "idle") {
    connText.textContent = "Idle: connects again when you send";
  } else if (state === "closed") {
    connText.textContent = `Disconnected${reason ? `: ${reason}` : closeCode ? ` (${closeCode})` : ""}`;
  }
  if (state === "open") banner.hidden = true;
}

// A refusal before the session starts (wrong or missing key, gateway full): say what to do about it.
client.addEventListener("refused", (e) => {
  const f = e.detail;
  banner.textContent = `${ERROR_TEXT[f.code] || "The server refused the connection."} ${f.message || ""}`.trim();
  banner.hidden = false;
  if (f.code === "unauthenticated") {
    $("creds").open = true;
    $("token").focus();
  }
});

$("creds-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = normalizeToken($("token").value); // "Bearer abc" as pasted from an API client: the key is "abc"
  const problem = tokenProblem(token);
  $("token-error").textContent = problem ? `This key cannot be used: ${problem}.` : "";
  if (problem) {
    $("token").focus();
    return;
  }
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  $("creds").open = false;
  banner.hidden = true;
  client.setToken(token || null);
  textBox.focus();
});

client.addEventListener("state", (e) => showState(e.detail));
// Back online: skip the backoff wait. An idle client (the server ended its idle session) stays idle until a send.
window.addEventListener("online", () => client.state === "reconnecting" && client.reconnectNow());

async function loadTasks() {
  let live;
  try {
    live = await client.tasks();
  } catch {
    return;
  }
  const current = taskSel.value;
  tasks.clear();
  taskSel.replaceChildren();
  for (const t of live) {
    tasks.set(t.task, t);
    const opt = el("option", null, t.streaming ? `${t.task} (streams)` : t.task);
    opt.value = t.task;
    taskSel.append(opt);
  }
  if (!live.length) {
    const opt = el("option", null, "no live tasks");
    opt.value = "";
    taskSel.append(opt);
  }
  if (tasks.has(current)) taskSel.value = current;
}

// ---- rendering outputs -----------------------------------------------------------------------------------------

const SCORE_CLASS = { neg: "neg", negative: "neg", neu: "neu", neutral: "neu", pos: "pos", positive: "pos" };

function renderSentiment(out, output) {
  const label = el("p", null);
  label.append("Sentiment: ", el("span", `label ${String(output.label)}`, String(output.label)));
  out.append(label);
  const bars = el("div", "bars");
  for (const [name, raw] of Object.entries(output.scores || {})) {
    const value = Number(raw);
    const isCompound = name === "compound";
    const share = isCompound ? (value + 1) / 2 : value;
    const bar = el("div", `bar ${SCORE_CLASS[name] || ""}`);
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", name);
    bar.setAttribute("aria-valuemin", isCompound ? "-1" : "0");
    bar.setAttribute("aria-valuemax", "1");
    bar.setAttribute("aria-valuenow", String(value));
    const fill = el("span");
    fill.style.width = `${Math.max(0, Math.min(1, share)) * 100}%`;
    bar.append(fill);
    bars.append(el("span", null, name), bar, el("span", "num", value.toFixed(3)));
  }
  out.append(bars);
}

function renderEmbedding(out, output) {
  const v = output.embedding;
  const norm = Math.sqrt(v.reduce((s, x) => s + x * x, 0));
  const facts = [`${v.length} dimensions`, `norm ${norm.toFixed(3)}`];
  if (output.tokens != null) facts.push(`${output.tokens} tokens`);
  out.append(el("p", "dims", `Embedding: ${facts.join(" · ")}`));
  const preview = v.slice(0, 8).map((x) => Number(x).toFixed(4)).join(", ");
  out.append(el("p", "vector", `[${preview}${v.length > 8 ? ", …" : ""}]`));
}

function renderOutput(msg, output) {
  const out = msg.output;
  if (output && typeof output === "object" && "label" in output && "scores" in output) {
    out.replaceChildren();
    renderSentiment(out, output);
  } else if (output && typeof output === "object" && Array.isArray(output.embedding)) {
    out.replaceChildren();
    renderEmbedding(out, output);
  } else if (output && typeof output === "object" && typeof output.text === "string") {
    msg.tokens().textContent = output.text;
    if (output.finish_reason) out.append(el("p", "status", `finished: ${output.finish_reason}`));
  } else if (!msg.streamed) {
    out.replaceChildren(el("pre", "json", JSON.stringify(output, null, 2)));
  }
}

// ---- one message -----------------------------------------------------------------------------------------------

function addMessage(task, text) {
  const li = template.content.firstElementChild.cloneNode(true);
  li.querySelector(".task").textContent = task;
  li.querySelector(".input").textContent = text;
  list.prepend(li);
  $("empty").hidden = true;
  const msg = {
    li,
    output: li.querySelector(".output"),
    status: li.querySelector(".status"),
    latency: li.querySelector(".latency"),
    stop: li.querySelector(".stop"),
    streamed: false,
    countdown: null,
    tokens() {
      let t = this.output.querySelector(".tokens");
      if (!t) {
        t = el("p", "tokens");
        this.output.prepend(t);
      }
      return t;
    },
    set(status, words) {
      li.dataset.status = status;
      this.status.textContent = words;
    },
  };
  return msg;
}

function showRetry(msg, { code, delayMs, attempt }) {
  clearInterval(msg.countdown);
  const line = el("p", "countdown");
  msg.output.replaceChildren(line);
  const until = performance.now() + delayMs;
  const tick = () => {
    const left = Math.max(0, until - performance.now());
    line.textContent = `${ERROR_TEXT[code] || code} Retrying in ${(left / 1000).toFixed(1)} s (retry ${attempt}).`;
    if (left <= 0) clearInterval(msg.countdown);
  };
  tick();
  msg.countdown = setInterval(tick, 100);
  msg.set("retrying", "waiting to retry");
}

function showError(msg, err) {
  clearInterval(msg.countdown);
  const words = ERROR_TEXT[err.code] || "The request failed.";
  const p = el("p", "error-text", `${words} (${err.code}${err.message && err.message !== err.code ? `: ${err.message}` : ""})`);
  if (err.retryAfterMs) p.append(` Try again in ${(err.retryAfterMs / 1000).toFixed(1)} s.`);
  if (msg.streamed) msg.output.append(p);
  else msg.output.replaceChildren(p);
  msg.set("error", err.code === "cancelled" ? "stopped" : "error");
}

async function send(task, text) {
  const info = tasks.get(task);
  const stream = !!(info && info.streaming);
  const msg = addMessage(task, text);
  const t0 = performance.now();
  let firstChunkMs = null;
  msg.set("pending", client.state === "open" ? "sending…" : "waiting for the connection…");
  const req = client.request(task, text, {
    stream,
    onAccepted: () => msg.set("pending", stream ? "queued" : "working…"),
    onRetry: (r) => showRetry(msg, r),
    onChunk: (c) => {
      if (firstChunkMs === null) {
        firstChunkMs = performance.now() - t0;
        clearInterval(msg.countdown);
        msg.output.replaceChildren();
        msg.tokens().classList.add("streaming");
        msg.set("streaming", "streaming…");
      }
      msg.streamed = true;
      const t = msg.tokens();
      t.textContent += typeof c.data === "string" ? c.data : JSON.stringify(c.data);
    },
  });
  msg.li.dataset.id = req.id;
  if (stream) {
    msg.stop.hidden = false;
    msg.stop.setAttribute("aria-label", `Stop generating: ${text.slice(0, 40)}`);
    msg.stop.addEventListener("click", () => req.cancel());
  }
  try {
    const result = await req.done;
    clearInterval(msg.countdown);
    if (!msg.streamed) msg.output.replaceChildren();
    renderOutput(msg, result.output);
    msg.set("done", "done");
  } catch (err) {
    showError(msg, err);
  } finally {
    const total = performance.now() - t0;
    msg.latency.textContent = firstChunkMs != null ? `first token ${fmtMs(firstChunkMs)} · ${fmtMs(total)}` : fmtMs(total);
    const t = msg.output.querySelector(".tokens");
    if (t) t.classList.remove("streaming");
    msg.stop.hidden = true;
  }
}

// ---- the form --------------------------------------------------------------------------------------------------

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = textBox.value.trim();
  const task = taskSel.value;
  if (!text) {
    formError.textContent = "Type some text first.";
    textBox.focus();
    return;
  }
  if (!task) {
    formError.textContent = "No task is available: start a worker.";
    return;
  }
  formError.textContent = "";
  textBox.value = "";
  send(task, text);
  textBox.focus();
});

textBox.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    form.requestSubmit();
  } else if (e.key === "Escape") {
    const running = list.querySelector('.msg[data-status="streaming"] .stop:not([hidden])');
    if (running) running.click();
  }
});

client.connect();
