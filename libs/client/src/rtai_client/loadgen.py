"""The load generator behind `rtai bench`: N WebSocket connections, closed loop or a fixed-rate open loop.

The generator must not be what limits the measurement, so it does the least work per request that Python allows: a
minimal RFC 6455 client written as an asyncio Protocol (no task, future or queue per message; the next request of a
closed loop is written from inside the callback that received the answer), frames parsed with orjson, masks applied
by websockets' C helper. Connections are spread over several processes when asked, idle sockets are held by
processes of their own, and each process reports the CPU time it used, so the report says what the generator itself
cost. This module plans a run and merges the processes' results; `_loadgen_process` is one process, `_ws_wire` its
WebSocket client.

Closed loop: each connection keeps `inflight` requests outstanding. Open loop: requests leave on a fixed schedule
(`rate` per second in total, round-robin over connections) and latency counts from the scheduled time, so a server
that falls behind shows its queueing delay instead of slowing the client down (no coordinated omission).
"""

from __future__ import annotations

import base64
import contextlib
import os
import select
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from rtai_client._loadgen_process import ProcessSpec

if TYPE_CHECKING:
    from rtai_client.report import BenchResult

IDLE_PER_PROCESS = 20_000
"""Idle sockets one holder process keeps open (each takes a file descriptor, raised to fit by the process)."""

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
    - `idle_connections` more sockets say hello and then stay silent for the whole run, held by processes of their
      own (one per `IDLE_PER_PROCESS`), so that holding them does not slow the processes that measure. The result's
      `idle_connections` is how many connected; failures are `connect_failed` errors, and sockets the server closed
      before the end `idle_closed_<code>`.
    - `processes` generator processes share the connections (default: 1 per 200 active connections, at most
      the CPU count); `on_measure_start`/`on_measure_end` are called around the measured window (in this process):
      with `requests=`, from when every process's warm-up requests are answered to when its last request is.
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
            ProcessSpec(
                urls=urls,
                index=i,
                connections=share,
                idle=0,
                mode=mode,
                counted=bool(requests),
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
    specs += _idle_holders(urls, nproc, idle_connections, mode, warmup_s, duration_s, timeout_s)
    return _orchestrate(specs, label, urls, weights, rate, on_measure_start, on_measure_end)


def _idle_holders(
    urls: list[str], first_index: int, idle: int, mode: str, warmup_s: float, duration_s: float, timeout_s: float
) -> list[ProcessSpec]:
    """Processes that only hold idle sockets open, kept apart from the measuring ones: 10,000 idle clients answering
    pings and filling a process's heap would otherwise slow the event loop that times the active requests, and the
    scenario would charge that to the gateway (in production idle clients are other machines)."""
    n = -(-idle // IDLE_PER_PROCESS)
    return [
        ProcessSpec(
            urls=urls,
            index=first_index + j,
            connections=0,
            idle=idle // n + (1 if j < idle % n else 0),
            mode=mode,
            counted=False,  # a holder sends nothing and says neither `warm` nor `done`
            rate=0.0,
            requests=0,
            warmup_requests=0,
            warmup_s=warmup_s,
            duration_s=duration_s,
            inflight=1,
            timeout_s=timeout_s,
        )
        for j in range(n)
    ]


def _orchestrate(
    specs: list[ProcessSpec],
    label: str,
    urls: list[str],
    weights: dict[str, float],
    rate: float | None,
    on_start: Callable[[], None] | None,
    on_end: Callable[[], None] | None,
) -> BenchResult:
    children: list[_Child] = []
    try:
        for spec in specs:
            children.append(_Child(spec))
        connected = idle = 0
        for c in children:
            words = c.line(180).split()
            if words[:1] != ["ready"] or len(words) != 4:
                raise RuntimeError(f"load generator process {c.pid} failed to start: {words!r}")
            connected += int(words[1])
            idle += int(words[2])  # the sockets that connected: failures are in the holder's `connect_failed`
        start_wall = time.time() + 0.3
        for c in children:
            c.send(f"go {start_wall}")
        s0 = specs[0]
        measuring = [c for c in children if c.spec.connections]
        holders = [c for c in children if not c.spec.connections]
        _window(s0, measuring, start_wall, on_start, on_end)
        limit = s0.duration_s + s0.warmup_s + s0.timeout_s + 60
        outs = [orjson.loads(c.line(limit)) for c in measuring]
        for c in holders:  # the idle sockets stay open until every measured request is done
            c.send("stop")
        outs += [orjson.loads(c.line(60)) for c in holders]
        wall = max([o.get("window_s", 0.0) for o in outs] + [1e-9])
    finally:
        for c in children:
            c.reap()
    return _merge(specs, outs, label, urls, weights, rate, idle, connected, wall)


def _window(
    s0: ProcessSpec,
    measuring: list[_Child],
    start_wall: float,
    on_start: Callable[[], None] | None,
    on_end: Callable[[], None] | None,
) -> None:
    """Call `on_start` and `on_end` around the measured window."""
    if not s0.counted:
        if on_start is not None:
            time.sleep(max(start_wall + s0.warmup_s - time.time(), 0.0))
            on_start()
        if on_end is not None:
            time.sleep(max(start_wall + s0.warmup_s + s0.duration_s - time.time(), 0.0))
            on_end()
        return
    # A request-count run has no clock to go by: the processes say when their warm-up requests are answered and when
    # their last request is, so the meter leaves out the warm-up and the sockets' teardown.
    for c in measuring:  # a share of 0 requests says both at once
        c.expect("warm", 3600)
    if on_start is not None:
        on_start()
    for c in measuring:
        c.expect("done", 3600)
    if on_end is not None:
        on_end()


def _merge(
    specs: list[ProcessSpec],
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
    total_time = wall + (specs[0].warmup_s if not specs[0].counted else 0.0)
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


CHILD_ARGV = [sys.executable, "-m", "rtai_client._loadgen_process"]
"""How a generator process is started; a module-level value so that tests can run a scripted one instead."""


class _Child:
    """One generator process and the lines it prints, read from the raw pipe: `select` sees only what the pipe holds,
    not lines a buffered reader has already taken in, and a process may print several at once (`done`, its result)."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        raw = dict(spec.__dict__)
        raw["frames"] = [(t, base64.b64encode(p).decode(), base64.b64encode(x).decode()) for t, p, x in spec.frames]
        # Its imports (the package's __init__ included) are paid before it prints `ready`, outside the measured window.
        self.popen = subprocess.Popen(CHILD_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.popen.pid
        self._buf = b""
        self.send(orjson.dumps(raw).decode())

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def line(self, timeout: float) -> str:
        """The next line, or an error if the process dies or stays silent past `timeout`."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                self.popen.kill()
                raise RuntimeError(f"load generator process {self.pid} silent for {timeout} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"load generator process {self.pid} exited with {self.popen.wait()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def expect(self, word: str, timeout: float) -> None:
        got = self.line(timeout)
        if got != word:
            raise RuntimeError(f"load generator process {self.pid} said {got[:200]!r}, not {word!r}")

    def reap(self) -> None:
        """Wait for the process to exit, killing it if it does not. Its stdin is closed first: a process still waiting
        for `go` or `stop` (a run that failed half-way) reads the end of it and leaves at once."""
        assert self.popen.stdin is not None
        assert self.popen.stdout is not None
        with contextlib.suppress(OSError):
            self.popen.stdin.close()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        self.popen.stdout.close()
