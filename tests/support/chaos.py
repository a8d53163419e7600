"""Steady load for chaos tests, with the client behaviour the protocol asks for: reconnect with jittered backoff
(to any gateway), resume with the last seq seen, and count every final frame per request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import websockets

FINAL = ("result", "error")


@dataclass
class Record:
    rid: str
    sent_at: float
    finals: list[dict[str, Any]] = field(default_factory=list)
    final_at: float | None = None


@dataclass
class VirtualClient:
    index: int
    urls: list[str]
    driver: LoadDriver
    session: str | None = None
    last_seq: int = 0
    ws: Any = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    outbox: list[str] = field(default_factory=list)
    unacked: dict[str, str] = field(default_factory=dict)
    """Requests sent with neither `accepted` nor a final frame yet: sent again (same id) after a reconnect, since
    the gateway may have closed before reading them. Idempotency makes that safe."""
    reconnects: int = 0
    resumed: int = 0
    fresh_sessions: int = 0
    close_codes: Counter[int] = field(default_factory=Counter)
    _task: asyncio.Task[None] | None = None
    stopping: bool = False

    async def run(self) -> None:
        attempt = 0
        url_i = self.index
        while not self.stopping:
            url = self.urls[url_i % len(self.urls)]
            try:
                async with websockets.connect(url, open_timeout=3, close_timeout=1, max_size=None) as ws:
                    hello: dict[str, Any] = {"type": "hello"}
                    if self.session:
                        hello.update(session=self.session, last_seq=self.last_seq)
                    await ws.send(json.dumps(hello))
                    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if welcome.get("type") != "welcome":
                        raise RuntimeError(f"expected welcome, got {welcome}")
                    if self.session and welcome["resumed"]:
                        self.resumed += 1
                    elif self.session:
                        self.fresh_sessions += 1
                    self.session = welcome["session"]
                    self.ws = ws
                    self.connected.set()
                    attempt = 0
                    pending, self.outbox = [*self.unacked.values(), *self.outbox], []
                    self.unacked.clear()
                    for raw in dict.fromkeys(pending):
                        await ws.send(raw)
                    async for raw in ws:
                        self._on_frame(json.loads(raw))
            except (OSError, websockets.WebSocketException, TimeoutError, RuntimeError) as e:
                if isinstance(e, websockets.ConnectionClosed) and e.rcvd is not None:
                    self.close_codes[e.rcvd.code] += 1
            finally:
                self.ws = None
                self.connected.clear()
            if self.stopping:
                return
            self.reconnects += 1
            attempt += 1
            url_i += 1  # try another gateway next
            await asyncio.sleep(random.uniform(0, min(0.05 * 2**attempt, 1.0)))

    def _on_frame(self, f: dict[str, Any]) -> None:
        if f.get("seq") is not None:
            self.last_seq = max(self.last_seq, f["seq"])
        if f.get("type") in ("accepted", *FINAL) and f.get("id") is not None:
            self.unacked.pop(f["id"], None)
        if f.get("type") in FINAL and f.get("id") in self.driver.records:
            rec = self.driver.records[f["id"]]
            rec.finals.append(f)
            if rec.final_at is None:
                rec.final_at = time.monotonic()

    async def send(self, frame: dict[str, Any]) -> None:
        raw = json.dumps(frame)
        self.unacked[frame["id"]] = raw
        ws = self.ws
        if ws is None:
            return  # in `unacked`: sent once connected
        with contextlib.suppress(websockets.WebSocketException):  # still in `unacked`: sent again after a reconnect
            await ws.send(raw)


@dataclass
class LoadDriver:
    urls: list[str]
    connections: int = 20
    rate: float = 200.0
    task: str = "sentiment"
    deadline_ms: int = 30_000
    records: dict[str, Record] = field(default_factory=dict)
    clients: list[VirtualClient] = field(default_factory=list)
    _ids: Any = field(default_factory=itertools.count)

    async def start(self) -> None:
        self.clients = [VirtualClient(i, self.urls, self) for i in range(self.connections)]
        for c in self.clients:
            c._task = asyncio.create_task(c.run())
        await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in self.clients)), 15)

    async def drive(self, duration_s: float) -> None:
        """Send at a steady rate, round robin over the clients (bounded by count and time)."""
        interval = 1.0 / self.rate
        end = time.monotonic() + duration_s
        next_at = time.monotonic()
        i = 0
        while time.monotonic() < end:
            c = self.clients[i % len(self.clients)]
            rid = f"q{next(self._ids)}"
            self.records[rid] = Record(rid, time.monotonic())
            await c.send(
                {
                    "type": "infer",
                    "id": rid,
                    "task": self.task,
                    "input": f"good day {rid}",
                    "options": {"deadline_ms": self.deadline_ms},
                }
            )
            i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def settle(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and any(not r.finals for r in self.records.values()):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # let any (wrong) second final frame arrive before counting

    async def stop(self) -> None:
        for c in self.clients:
            c.stopping = True
            if c.ws is not None:
                await c.ws.close()
        await asyncio.gather(*(c._task for c in self.clients if c._task), return_exceptions=True)

    def report(self, name: str, fault_at: float | None, fault_end: float | None = None) -> dict[str, Any]:
        """Counts over every request sent. `fault_at`: when the fault began; `fault_end`: when it was taken away (an
        outage's restart; default: `fault_at`, a kill is over when it happens). Recovery is the time from the fault's
        end to the send of the 20th of 20 results in a row sent after it: counted from the start of a lasting fault,
        requests that beat the fault to Redis would make a 10 s outage look recovered in 0.2 s."""
        recs = sorted(self.records.values(), key=lambda r: r.sent_at)
        codes: Counter[str] = Counter()
        for r in recs:
            if r.finals:
                f = r.finals[0]
                codes["ok" if f["type"] == "result" else f.get("code", "?")] += 1
        lost = [r.rid for r in recs if not r.finals]
        dups = [r.rid for r in recs if len(r.finals) > 1]
        recover = None
        fault_lat: list[float] = []
        if fault_at is not None:
            over = fault_end if fault_end is not None else fault_at
            streak = 0
            for r in recs:
                if r.sent_at < over:
                    continue
                ok = bool(r.finals) and r.finals[0]["type"] == "result"
                streak = streak + 1 if ok else 0
                if streak >= 20:
                    recover = r.sent_at - over
                    break
            window_end = over + (recover or 0.0) + 1.0
            fault_lat = sorted(
                (r.final_at - r.sent_at) for r in recs if fault_at <= r.sent_at <= window_end and r.final_at
            )
        p99 = fault_lat[int(len(fault_lat) * 0.99) - 1] * 1000 if fault_lat else None
        return {
            "scenario": name,
            "sent": len(recs),
            "results": codes.get("ok", 0),
            "errors": {k: v for k, v in codes.items() if k != "ok"},
            "lost": len(lost),
            "duplicates": len(dups),
            "p99_ms_during_fault": round(p99, 1) if p99 is not None else None,
            "recover_s": round(recover, 2) if recover is not None else None,
            "reconnects": sum(c.reconnects for c in self.clients),
            "resumed": sum(c.resumed for c in self.clients),
            "close_codes": dict(sum((c.close_codes for c in self.clients), Counter())),
            "lost_ids": lost[:10],
            "duplicate_ids": dups[:10],
        }
