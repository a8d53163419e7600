"""The load generator behind `rtai bench`: N WebSocket connections, closed loop or a fixed-rate open loop.

The generator must not be what limits the measurement, so it does the least work per request that Python allows: a
minimal RFC 6455 client written as an asyncio Protocol (no task, future or queue per message; the next request of a
closed loop is written from inside the callback that received the answer), frames parsed with orjson, masks applied
by websockets' C helper. Connections are spread over several processes when asked, and each process reports the CPU
time it used, so the report says what the generator itself cost.

Closed loop: each connection keeps `inflight` requests outstanding. Open loop: requests leave on a fixed schedule
(`rate` per second in total, round-robin over connections) and latency counts from the scheduled time, so a server
that falls behind shows its queueing delay instead of slowing the client down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import resource
import select
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from rtai_client.report import BenchResult

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - a platform without the C helper
    from websockets.utils import apply_mask as _apply_mask


DEFAULT_TEXTS: tuple[str, ...] = (
    "I love this product, it works great!",
    "Terrible service, I will never come back.",
    "The package arrived on Tuesday.",
    "Not bad at all, but the battery could last longer.",
    "Absolutely fantastic experience :)",
    "This is the worst movie I have seen this year.",
    "It is okay, nothing special.",
    "Great value for the money, highly recommended.",
)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_now = time.perf_counter
CONNECT_CONCURRENCY = 32
"""Handshakes in flight at once per process (a reconnect storm is a scenario of its own, not this one's)."""


class _Ws(asyncio.Protocol):
    """One client WebSocket. Calls `owner.on_text(self, payload)` per text message, `owner.on_close(self, code)`."""

    def __init__(self, owner: _Worker, host: bytes, path: bytes) -> None:
        self.owner = owner
        self.host = host
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.closed = False
        self.buf = bytearray()
        self.frag = bytearray()
        self.index = 0
        self.counter = 0
        self.outstanding: dict[bytes, float] = {}
        self._accept = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(
            b"GET " + self.path + b" HTTP/1.1\r\nHost: " + self.host + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed:
            self.closed = True
            self.owner.on_close(self, 1006)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.is_open and not self._handshake():
            return
        pos, n_buf = 0, len(buf)
        while n_buf - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if n_buf - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if n_buf - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n_buf - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._frame(b0, payload)
        del buf[:pos]

    def _handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end]).lower()
        del self.buf[: end + 4]
        if not head.startswith(b"http/1.1 101") or self._accept.lower() not in head:
            self.opened.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
            assert self.transport is not None
            self.transport.close()
            return False
        self.is_open = True
        self.opened.set_result(None)
        return True

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (1, 2, 0):
            if not b0 & 0x80:
                self.frag += payload
                return
            if self.frag:
                payload, self.frag = bytes(self.frag + payload), bytearray()
            self.owner.on_text(self, payload)
        elif opcode == 9:
            self._send(0x8A, payload)
        elif opcode == 8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closed:
                self.closed = True
                self._send(0x88, payload[:2])
                self.owner.on_close(self, code)
            assert self.transport is not None
            self.transport.close()

    def _send(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((first, 0x80 | n))
        elif n < 65536:
            header = bytes((first, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((first, 0xFF)) + n.to_bytes(8, "big")
        mask = random.getrandbits(32).to_bytes(4, "big")
        self.transport.write(header + mask + _apply_mask(payload, mask))

    def send_text(self, payload: bytes) -> None:
        self._send(0x81, payload)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send(0x88, (1000).to_bytes(2, "big"))


@dataclass
class _Spec:
    """What one generator process does (plain data: it crosses a process boundary)."""

    urls: list[str]
    index: int
    connections: int
    idle: int
    mode: str
    rate: float
    requests: int
    warmup_requests: int
    warmup_s: float
    duration_s: float
    inflight: int
    timeout_s: float
    frames: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    """(task, request frame prefix up to the id, suffix after it), cycled through in order."""


class _Worker:
    """The per-process state: connections, the schedule, and what was measured."""

    def __init__(self, spec: _Spec) -> None:
        self.s = spec
        self.loop = asyncio.get_running_loop()
        self.active: list[_Ws] = []
        self.idle: list[_Ws] = []
        self.samples = array("d")
        self.errors: dict[str, int] = {}
        self.sent = self.ok = self.completed = 0
        self.issued = 0
        self.frame_i = 0
        self.measure_from = self.measure_to = self.stop_at = float("inf")
        self.running = False
        self.started_at = self.last_completion = 0.0
        self._schedule: asyncio.Task[None] | None = None
        self.all_done: asyncio.Future[None] = self.loop.create_future()

    def error(self, code: str, measured: bool = True) -> None:
        if measured:
            self.errors[code] = self.errors.get(code, 0) + 1

    # ---- connections -------------------------------------------------------------------------------------------

    async def connect_all(self) -> None:
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)
        urls = self.s.urls
        total = self.s.connections + self.s.idle
        first = self.s.index * 7919  # spread processes over several URLs

        async def one(i: int) -> None:
            async with sem:
                u = urlsplit(urls[(first + i) % len(urls)])
                host, port = u.hostname or "127.0.0.1", u.port or 80
                path = (u.path or "/") + (f"?{u.query}" if u.query else "")
                try:
                    _, ws = await self.loop.create_connection(
                        lambda: _Ws(self, f"{host}:{port}".encode(), path.encode()), host, port
                    )
                    await asyncio.wait_for(ws.opened, 30)
                    ws.send_text(b'{"type":"hello"}')
                    await asyncio.wait_for(ws.welcomed, 30)
                except (OSError, TimeoutError, ConnectionError) as e:
                    self.errors["connect_failed"] = self.errors.get("connect_failed", 0) + 1
                    if self.errors["connect_failed"] == 1:
                        sys.stderr.write(f"rtai loadgen: connect to {u.geturl()} failed: {e!r}\n")
                    return
                ws.index = i
                (self.active if i < self.s.connections else self.idle).append(ws)

        await asyncio.gather(*(one(i) for i in range(total)))

    def on_close(self, ws: _Ws, code: int) -> None:
        if ws in self.active and self.running:
            self.error(f"closed_{code}")
            lost = len(ws.outstanding)
            if lost:
                self.errors["timeout"] = self.errors.get("timeout", 0) + lost
            ws.outstanding.clear()

    # ---- requests ----------------------------------------------------------------------------------------------

    def send(self, ws: _Ws, scheduled: float) -> None:
        _task, prefix, suffix = self.s.frames[self.frame_i % len(self.s.frames)]
        self.frame_i += 1
        ws.counter += 1
        rid = f"{self.s.index}.{ws.index}.{ws.counter}".encode()
        ws.outstanding[rid] = scheduled
        ws.send_text(prefix + rid + suffix)
        self.issued += 1
        if scheduled >= self.measure_from:
            self.sent += 1

    def on_text(self, ws: _Ws, payload: bytes) -> None:
        try:
            msg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.error("bad_frame")
            return
        kind = msg.get("type")
        if kind == "welcome":
            if not ws.welcomed.done():
                ws.welcomed.set_result(None)
            return
        if kind not in ("result", "error"):
            return  # accepted, chunk
        now = _now()
        rid = msg.get("id")
        started = ws.outstanding.pop(rid.encode(), None) if isinstance(rid, str) else None
        if started is None:
            self.error(f"unmatched_{msg.get('code', kind)}", self.running)
            return
        self.completed += 1
        measured = self.measure_from <= started < self.measure_to
        if self.s.warmup_requests and self.completed <= self.s.warmup_requests:
            measured = False
            self.started_at = now  # a request-count run's window opens after its warm-up
        if measured:
            if kind == "result":
                self.ok += 1
                self.samples.append((now - started) * 1000.0)
            else:
                self.error(str(msg.get("code", "error")))
        self.last_completion = now
        if self.s.mode == "closed":
            self._next_closed(ws, now)

    def _next_closed(self, ws: _Ws, now: float) -> None:
        if not self.running or now >= self.stop_at:
            return
        if self.s.requests and self.issued >= self.s.requests:
            return
        self.send(ws, now)

    def _check_done(self) -> None:
        if self.all_done.done():
            return
        if any(ws.outstanding for ws in self.active):
            return
        if (self.s.requests and self.issued >= self.s.requests) or _now() >= self.stop_at:
            self.all_done.set_result(None)

    # ---- the run -----------------------------------------------------------------------------------------------

    async def run(self, start_wall: float) -> None:
        start = _now() + max(start_wall - time.time(), 0.0)
        await asyncio.sleep(max(start - _now(), 0.0))
        self.started_at = start
        s = self.s
        if s.requests:
            self.measure_from, self.measure_to, self.stop_at = start, float("inf"), float("inf")
        else:
            self.measure_from = start + s.warmup_s
            self.measure_to = self.stop_at = self.measure_from + s.duration_s
        self.running = True
        if not self.active:
            return
        if s.mode == "closed":
            for ws in self.active:
                for _ in range(s.inflight):
                    self._next_closed(ws, _now())
        else:
            self._schedule = self.loop.create_task(self._open_schedule(start))
        deadline = (self.stop_at if not s.requests else _now() + 3600) + s.timeout_s
        while not self.all_done.done() and _now() < deadline:
            await asyncio.sleep(0.05)
            self._check_done()
        self.running = False
        lost = sum(len(ws.outstanding) for ws in self.active)
        if lost:
            self.errors["timeout"] = self.errors.get("timeout", 0) + lost

    async def _open_schedule(self, start: float) -> None:
        rate, conns = self.s.rate, self.active
        cap = self.s.inflight
        k = 0
        while self.running:
            now = _now()
            if now >= self.stop_at:
                return
            due = int((now - start) * rate)
            while k < due:
                scheduled = start + k / rate
                ws = conns[k % len(conns)]
                k += 1
                if ws.closed or len(ws.outstanding) >= cap:
                    self.error("not_sent", scheduled >= self.measure_from)
                    continue
                self.send(ws, scheduled)
            await asyncio.sleep(max(start + (k + 1) / rate - _now(), 0.0005))

    async def close_all(self) -> None:
        for ws in (*self.active, *self.idle):
            ws.close()
        await asyncio.sleep(0.2)
        for ws in (*self.active, *self.idle):
            if ws.transport is not None:
                ws.transport.close()


def _raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else want, hard))


def _child_main() -> None:
    """Entry point of one generator process (`python .../loadgen.py`): the spec arrives as one JSON line on
    stdin; it connects, prints `ready`, waits for `go <unix time>`, runs, and prints its result as one JSON line."""
    raw = orjson.loads(sys.stdin.readline())
    raw["frames"] = [(t, base64.b64decode(p), base64.b64decode(x)) for t, p, x in raw["frames"]]
    spec = _Spec(**raw)
    _raise_nofile(spec.connections + spec.idle + 64)
    loop_name = "asyncio"
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        loop_name = "uvloop"
    except ImportError:
        runner = asyncio.Runner()

    async def main() -> dict[str, Any]:
        w = _Worker(spec)
        await w.connect_all()
        _say(f"ready {len(w.active)} {len(w.idle)} {w.errors.get('connect_failed', 0)}")
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line.startswith("go "):
            await w.close_all()
            return {}
        cpu0 = time.process_time()
        await w.run(float(line.split()[1]))
        cpu = time.process_time() - cpu0
        await w.close_all()
        return {
            "ok": w.ok,
            "sent": w.sent,
            "errors": w.errors,
            "samples": base64.b64encode(w.samples.tobytes()).decode(),
            "cpu_s": cpu,
            "window_s": (w.last_completion - w.started_at) if spec.requests else spec.duration_s,
            "loop": loop_name,
        }

    with runner:
        result = runner.run(main())
    _say(orjson.dumps(result).decode())


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


Frames = list[tuple[str, bytes, bytes]]


def _frames(tasks: Mapping[str, float], texts: Sequence[str], deadline_ms: int | None) -> Frames:
    """A cycle of request frames following the task weights (largest remainder over 100 slots)."""
    total = sum(tasks.values())
    slots = {t: max(round(100 * w / total), 1) for t, w in tasks.items() if w > 0}
    order = sorted(((i / n, t) for t, n in slots.items() for i in range(n)))
    options = b',"options":{"deadline_ms":' + str(deadline_ms).encode() + b"}" if deadline_ms else b""
    frames = []
    for j, (_, task) in enumerate(order):
        text = texts[j % len(texts)]
        prefix = b'{"type":"infer","task":"' + task.encode() + b'","id":"'
        frames.append((task, prefix, b'","input":' + orjson.dumps(text) + options + b"}"))
    return frames


def run_bench(
    url: str | Sequence[str],
    connections: int = 10,
    duration_s: float = 10.0,
    rate: float | None = None,
    tasks: Mapping[str, float] | Sequence[str] | str = "sentiment",
    *,
    requests: int | None = None,
    texts: Sequence[str] = DEFAULT_TEXTS,
    processes: int | None = None,
    idle_connections: int = 0,
    warmup_s: float = 1.0,
    warmup_requests: int = 0,
    inflight: int | None = None,
    timeout_s: float = 10.0,
    deadline_ms: int | None = None,
    label: str = "",
    on_measure_start: Callable[[], None] | None = None,
    on_measure_end: Callable[[], None] | None = None,
) -> BenchResult:
    """Run one load test against the gateway WebSocket URL(s) (`ws://host:port/v1/ws`) and return what it measured.

    - Closed loop (`rate=None`): `connections` sockets each keep `inflight` (default 1) requests outstanding.
    - Open loop (`rate=R`): R requests/s in total on a fixed schedule; a connection holds at most `inflight` (default
      128) outstanding, and schedule slots beyond that are counted as `not_sent` errors.
    - `requests=N` runs N requests (after `warmup_requests`) instead of `duration_s` seconds (after `warmup_s`).
    - `tasks` is a task name, a list (equal weights) or `{task: weight}`; `texts` are cycled through.
    - `idle_connections` more sockets say hello and then stay silent for the whole run.
    - `processes` generator processes share the connections (default: 1 per 200 active connections, at most
      the CPU count); `on_measure_start`/`on_measure_end` are called around the measured window (in this process).
    """
    urls = [url] if isinstance(url, str) else list(url)
    if connections < 1:
        raise ValueError("connections must be at least 1")
    if isinstance(tasks, str):
        weights = {tasks: 1.0}
    else:
        weights = dict(tasks) if isinstance(tasks, Mapping) else dict.fromkeys(tasks, 1.0)
    mode = "closed" if rate is None else "open"
    nproc = processes or min(max(1, connections // 200), os.cpu_count() or 1)
    nproc = max(1, min(nproc, connections))
    frames = _frames(weights, texts, deadline_ms)
    specs = []
    for i in range(nproc):
        share = connections // nproc + (1 if i < connections % nproc else 0)
        specs.append(
            _Spec(
                urls=urls,
                index=i,
                connections=share,
                idle=idle_connections // nproc + (1 if i < idle_connections % nproc else 0),
                mode=mode,
                rate=(rate or 0.0) * share / connections,
                requests=(requests or 0) * share // connections,
                warmup_requests=warmup_requests * share // connections,
                warmup_s=0.0 if requests else warmup_s,
                duration_s=duration_s,
                inflight=inflight or (1 if mode == "closed" else 128),
                timeout_s=timeout_s,
                frames=frames[i % len(frames) :] + frames[: i % len(frames)],
            )
        )
    if requests:  # the remainders go to the first process; `requests` of a spec counts its warm-up too
        specs[0].requests += requests - sum(s.requests for s in specs)
        specs[0].warmup_requests += warmup_requests - sum(s.warmup_requests for s in specs)
        for s in specs:
            s.requests += s.warmup_requests
    return _orchestrate(specs, label, urls, weights, rate, idle_connections, on_measure_start, on_measure_end)


def _orchestrate(
    specs: list[_Spec],
    label: str,
    urls: list[str],
    weights: dict[str, float],
    rate: float | None,
    idle: int,
    on_start: Callable[[], None] | None,
    on_end: Callable[[], None] | None,
) -> BenchResult:
    procs: list[subprocess.Popen[str]] = []
    try:
        for spec in specs:
            procs.append(_spawn(spec))
        connected = 0
        for p in procs:
            words = _read_line(p, 180).split()
            if words[:1] != ["ready"]:
                raise RuntimeError(f"load generator process {p.pid} failed to start: {words!r}")
            connected += int(words[1])
        start_wall = time.time() + 0.3
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"go {start_wall}\n")
            p.stdin.flush()
        s0 = specs[0]
        timed = not s0.requests
        if on_start is not None:
            time.sleep(max(start_wall + (s0.warmup_s if timed else 0.0) - time.time(), 0.0))
            on_start()
        if timed and on_end is not None:
            time.sleep(max(start_wall + s0.warmup_s + s0.duration_s - time.time(), 0.0))
            on_end()
        limit = (s0.duration_s + s0.warmup_s + s0.timeout_s + 60) if timed else 3600
        outs = [orjson.loads(_read_line(p, limit)) for p in procs]
        if not timed and on_end is not None:
            on_end()
        wall = max([o.get("window_s", 0.0) for o in outs] + [1e-9])
    finally:
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    return _merge(specs, outs, label, urls, weights, rate, idle, connected, wall)


def _merge(
    specs: list[_Spec],
    outs: list[dict[str, Any]],
    label: str,
    urls: list[str],
    weights: dict[str, float],
    rate: float | None,
    idle: int,
    connected: int,
    wall: float,
) -> BenchResult:
    from rtai_client.report import BenchResult, latency_summary

    samples = array("d")
    errors: dict[str, int] = {}
    for o in outs:
        chunk = array("d")
        chunk.frombytes(base64.b64decode(o["samples"]))
        samples.extend(chunk)
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ok = sum(o["ok"] for o in outs)
    cpu = sum(o["cpu_s"] for o in outs)
    total_time = wall + (specs[0].warmup_s if not specs[0].requests else 0.0)
    return BenchResult(
        label=label,
        urls=urls,
        mode=specs[0].mode,
        connections=connected,
        idle_connections=idle,
        processes=len(specs),
        rate=rate,
        tasks=weights,
        duration_s=round(wall, 3),
        sent=sum(o["sent"] for o in outs),
        ok=ok,
        errors=errors,
        throughput=round(ok / wall, 1),
        latency_ms=latency_summary(samples),
        loadgen_cpu_s=round(cpu, 3),
        loadgen_cpu_cores=round(cpu / total_time, 3),
        loop=outs[0].get("loop", "") if outs else "",
        samples_ms=list(samples),
    )


def _spawn(spec: _Spec) -> subprocess.Popen[str]:
    raw = dict(spec.__dict__)
    raw["frames"] = [(t, base64.b64encode(p).decode(), base64.b64encode(x).decode()) for t, p, x in spec.frames]
    # Run by file path, not `-m rtai_client.loadgen`: the child needs nothing else from the package, so it starts
    # fast and does not pay for (or depend on) whatever the package's __init__ imports.
    p = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert p.stdin is not None
    p.stdin.write(orjson.dumps(raw).decode() + "\n")
    p.stdin.flush()
    return p


def _read_line(p: subprocess.Popen[str], timeout: float) -> str:
    """One line from a generator process, or an error if it dies or stays silent past `timeout`."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    if not ready:
        p.kill()
        raise RuntimeError(f"load generator process {p.pid} silent for {timeout} s")
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"load generator process {p.pid} exited with {p.wait()}")
    return line


if __name__ == "__main__":
    _child_main()
