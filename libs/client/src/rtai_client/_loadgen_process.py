"""One load generator process: its connections, its schedule and what it measured (`rtai bench`, `loadgen.py`).

Started as `python -m rtai_client._loadgen_process` by `loadgen.run_bench`: the spec arrives as one JSON line on
stdin; the process connects, prints `ready <active> <idle> <connect failures>`, waits for `go <unix time>`, runs, and
prints its result as one JSON line. A process counting requests also prints `warm` when its warm-up requests are
answered and `done` when its last request is, before closing its sockets: the parent's CPU meter of the servers runs
between the two, so it covers the measured requests only.
"""

from __future__ import annotations

import asyncio
import base64
import resource
import sys
import time
from array import array
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from rtai_client._ws_wire import RawWebSocket

_now = time.perf_counter
CONNECT_CONCURRENCY = 32
"""Handshakes in flight at once per process (a reconnect storm is a scenario of its own, not this one's)."""
MIN_SLEEP_S = 0.001
"""The open-loop schedule's shortest sleep: the event loop's timer granularity. uvloop's timers count whole
milliseconds, and a shorter sleep there does not sleep at all: the schedule spun, taking a core from the servers it
measured (0.86 cores at 2,048 requests/s). Each wake sends every request that has come due; a request is still timed
from its scheduled moment, so this lag (under 1 ms) counts against the pipeline, never for it."""


@dataclass
class ProcessSpec:
    """What one generator process does (plain data: it crosses a process boundary)."""

    urls: list[str]
    index: int
    connections: int
    idle: int
    mode: str
    counted: bool
    """True: run `requests` requests (a share of 0 sends nothing); False: run by the clock (`warmup_s`, `duration_s`).
    Explicit, not read from `requests` being above 0: a count run's process whose share rounded to 0 would run by the
    clock, sending traffic for `duration_s` that nobody asked for."""
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

    def __init__(self, spec: ProcessSpec) -> None:
        self.s = spec
        self.loop = asyncio.get_running_loop()
        self.active: list[RawWebSocket] = []
        self.idle: list[RawWebSocket] = []
        self.samples = array("d")
        self.errors: dict[str, int] = {}
        self.sent = self.ok = self.completed = 0
        self.issued = 0
        self.frame_i = 0
        self.measure_from = self.measure_to = self.stop_at = float("inf")
        self.running = False
        self.stopping = False
        """Set once the parent says `stop` (a holder) or the sockets are closed: no close counts as an error then."""
        self.warm = False
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
                        lambda: RawWebSocket(self, f"{host}:{port}".encode(), path.encode()), host, port
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

    def on_close(self, ws: RawWebSocket, code: int) -> None:
        # A holder's welcomed socket closed by the server at any time before the holder is told to stop, the wait for
        # `go` included: the verdict on idle sockets must know that fewer were open than `ready` said. One that never
        # got its welcome is already a `connect_failed`.
        welcomed = ws.welcomed.done() and not ws.welcomed.cancelled()
        if not self.s.connections and not self.stopping and welcomed:
            self.error(f"idle_closed_{code}")
        if ws in self.active and self.running:
            self.error(f"closed_{code}")
            lost = len(ws.outstanding)
            if lost:
                self.errors["timeout"] = self.errors.get("timeout", 0) + lost
            ws.outstanding.clear()

    # ---- requests ----------------------------------------------------------------------------------------------

    def send(self, ws: RawWebSocket, scheduled: float) -> None:
        _task, prefix, suffix = self.s.frames[self.frame_i % len(self.s.frames)]
        self.frame_i += 1
        ws.counter += 1
        rid = f"{self.s.index}.{ws.index}.{ws.counter}".encode()
        ws.outstanding[rid] = scheduled
        ws.send_text(prefix + rid + suffix)
        self.issued += 1
        if scheduled >= self.measure_from:
            self.sent += 1

    def on_text(self, ws: RawWebSocket, payload: bytes) -> None:
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
            if self.completed == self.s.warmup_requests:
                self._say_warm()
        if measured:
            if kind == "result":
                self.ok += 1
                self.samples.append((now - started) * 1000.0)
            else:
                self.error(str(msg.get("code", "error")))
        self.last_completion = now
        if self.s.mode == "closed":
            self._next_closed(ws, now)
        if self.s.counted and self.issued >= self.s.requests:
            self._check_done()  # the last answers: `done` goes out now, not at the next poll

    def _next_closed(self, ws: RawWebSocket, now: float) -> None:
        if not self.running or now >= self.stop_at:
            return
        if self.s.counted and self.issued >= self.s.requests:
            return
        self.send(ws, now)

    def _say_warm(self) -> None:
        """Tell the parent that the measured requests start now (request-count runs only; once)."""
        if self.s.counted and not self.warm:
            self.warm = True
            _say("warm")

    def _check_done(self) -> None:
        if self.all_done.done():
            return
        if any(ws.outstanding for ws in self.active):
            return
        if (self.s.counted and self.issued >= self.s.requests) or _now() >= self.stop_at:
            self.all_done.set_result(None)

    # ---- the run -----------------------------------------------------------------------------------------------

    async def run(self, start_wall: float) -> None:
        start = _now() + max(start_wall - time.time(), 0.0)
        await asyncio.sleep(max(start - _now(), 0.0))
        self.started_at = start
        s = self.s
        if s.counted:
            self.measure_from, self.measure_to, self.stop_at = start, float("inf"), float("inf")
        else:
            self.measure_from = start + s.warmup_s
            self.measure_to = self.stop_at = self.measure_from + s.duration_s
        self.running = True
        if not self.active or not s.warmup_requests:
            self._say_warm()  # nothing to warm up
        if not self.active:
            return
        if s.mode == "closed":
            for ws in self.active:
                for _ in range(s.inflight):
                    self._next_closed(ws, _now())
        else:
            self._schedule = self.loop.create_task(self._open_schedule(start))
        deadline = (self.stop_at if not s.counted else _now() + 3600) + s.timeout_s
        while not self.all_done.done() and _now() < deadline:
            await asyncio.wait([self.all_done], timeout=0.05)
            self._check_done()
        self.running = False
        self._say_warm()  # warm-up requests that never came back still end the warm-up, so the parent never hangs
        lost = sum(len(ws.outstanding) for ws in self.active)
        if lost:
            self.errors["timeout"] = self.errors.get("timeout", 0) + lost

    async def _open_schedule(self, start: float) -> None:
        rate, conns = self.s.rate, self.active
        cap = self.s.inflight
        k = 0
        while self.running:
            now = _now()
            if now >= self.stop_at or (self.s.counted and self.issued >= self.s.requests):
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
            await asyncio.sleep(max(start + (k + 1) / rate - _now(), MIN_SLEEP_S))

    async def close_all(self) -> None:
        self.stopping = True
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
    spec = ProcessSpec(**raw)
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
        if spec.counted and spec.connections:
            _say("done")
        if not spec.connections:  # an idle-socket holder: keep them open until the measuring processes are done
            await asyncio.to_thread(sys.stdin.readline)
            w.stopping = True
            w.running = False
        cpu = time.process_time() - cpu0
        await w.close_all()
        # A process that completed nothing (a share of 0 requests) measured no window.
        window = max(w.last_completion - w.started_at, 0.0) if spec.counted else spec.duration_s
        return {
            "ok": w.ok,
            "sent": w.sent,
            "errors": w.errors,
            "samples": base64.b64encode(w.samples.tobytes()).decode(),
            "cpu_s": cpu,
            "window_s": window if spec.connections else 0.0,  # a holder measured nothing
            "loop": loop_name,
        }

    with runner:
        result = runner.run(main())
    _say(orjson.dumps(result).decode())


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _child_main()
