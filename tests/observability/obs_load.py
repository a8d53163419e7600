"""The load the live observability test drives through a running stack: normal requests, streams, client errors,
an overload (worker paused while the queue fills past the gateway's backlog limit) and a reclaimed job (worker
killed while it holds a job; a second worker takes it over). Every panel of the dashboards must show something
after it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from obs_stack import Stack, prom_query, wait_until_scraped
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

_ids = itertools.count(1)


def _next_id(kind: str) -> str:
    return f"{kind}-{next(_ids)}"


@dataclass
class LoadReport:
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Request id -> its final frame (`result` or `error`)."""
    chunks: Counter[str] = field(default_factory=Counter)
    """Request id -> chunk frames received."""
    duplicates: list[str] = field(default_factory=list)
    """Request ids that received a second final frame (each request must get exactly one)."""
    invalid_frame_answer: str = ""
    """What the gateway answered (or how it closed) after a frame that is not JSON."""
    steps: list[str] = field(default_factory=list)

    def outcomes(self) -> Counter[str]:
        return Counter("ok" if f["type"] == "result" else str(f.get("code")) for f in self.finals.values())


class Client:
    """One WebSocket; sends infer frames and collects the frames that answer them."""

    def __init__(self, url: str, report: LoadReport) -> None:
        self._exit = contextlib.ExitStack()
        self.ws: ClientConnection = self._exit.enter_context(_connect(url))
        self.report = report
        self.sent: list[str] = []

    def infer(self, task: str, text: str, kind: str = "r", **options: Any) -> str:
        rid = _next_id(kind)
        frame: dict[str, Any] = {"type": "infer", "id": rid, "task": task, "input": text}
        if options:
            frame["options"] = options
        self.ws.send(json.dumps(frame))
        self.sent.append(rid)
        return rid

    def pump(self, ids: list[str] | None = None, timeout: float = 15.0) -> None:
        """Read frames until every id (default: every id sent) has its final frame, or the timeout."""
        wanted = set(self.sent if ids is None else ids)
        deadline = time.monotonic() + timeout
        while not wanted <= self.report.finals.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(wanted - self.report.finals.keys())
                raise TimeoutError(f"no final frame for {missing} after {timeout}s")
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                continue
            frame = json.loads(raw)
            rid = frame.get("id")
            if frame.get("type") == "chunk" and rid:
                self.report.chunks[rid] += 1
            elif frame.get("type") in ("result", "error") and rid:
                if rid in self.report.finals:
                    self.report.duplicates.append(rid)
                else:
                    self.report.finals[rid] = frame

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._exit.close()


def _connect(url: str) -> Any:
    return connect(url, open_timeout=10, close_timeout=2, proxy=None)


def _send_garbage(url: str, report: LoadReport) -> None:
    with _connect(url) as ws:
        try:
            ws.send("this is not json {")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                frame = json.loads(ws.recv(timeout=deadline - time.monotonic()))
                if frame.get("type") == "error":
                    report.invalid_frame_answer = f"error {frame.get('code')}"
                    return
        except ConnectionClosed as e:
            report.invalid_frame_answer = f"closed {e.rcvd.code if e.rcvd else None}"
        except TimeoutError:
            report.invalid_frame_answer = "no answer"


def _wait_busy(stack: Stack, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if re.search(r"^rtai_worker_busy 1(\.0)?$", stack.metrics_text(port), re.MULTILINE):
                return True
        time.sleep(0.05)
    return False


def normal_traffic(client: Client, n: int = 8) -> None:
    for i in range(n):
        client.infer("sentiment", "I love it" if i % 2 else "this is terrible", kind="ok")
    for _ in range(2):
        client.infer("stream", "tokens arrive one by one", kind="stream", stream=True)
    client.pump()


def overload(stack: Stack, report: LoadReport, requests: int = 20) -> None:
    """Pause the worker, spread `requests` over four sockets (so no per-socket limit trips first) until the
    gateway's backlog limit refuses some, then let the worker drain the rest."""
    worker, _ = stack.workers[-1]
    clients = [Client(stack.gateway_ws, report) for _ in range(4)]
    worker.signal(signal.SIGSTOP)
    try:
        for i in range(requests):
            clients[i % 4].infer("sentiment", f"request {i} while the worker is paused", kind="load")
            time.sleep(0.075)
    finally:
        worker.signal(signal.SIGCONT)
    for c in clients:
        c.pump(timeout=30)
        c.close()


def recovery(stack: Stack, report: LoadReport, client: Client) -> None:
    """Make one job dead-lettered and another reclaimed and re-run, with every worker alive at the end (a killed
    process's counters vanish from Prometheus, and the panels must show these). A paused (SIGSTOP) worker is
    silent like a dead one: its pending jobs go idle and are taken over.

    1. Worker A holds slow job X and is paused; a new worker B (max_deliveries=1) reclaims X: its second delivery is
       one too many, so X is dead-lettered (and answered `failed`).
    2. Worker B holds slow job Y and is paused; worker A resumes and reclaims Y (second delivery of three
       allowed): Y is re-run and answered. Then B resumes; late results of X and Y must not reach the client again.
    """
    (worker_a, port_a) = stack.workers[-1]
    x = client.infer("slow", "this job will be dead-lettered", kind="deadletter", deadline_ms=60_000)
    report.steps.append(f"A busy with X: {_wait_busy(stack, port_a)}")
    worker_a.signal(signal.SIGSTOP)
    # B reclaims only after X has been idle 4 s, so Prometheus scrapes B's counters at 0 before they move (a
    # counter first seen at 1 shows no increase).
    worker_b = stack.start_worker(reclaim_idle_ms="4000", max_deliveries="1")
    port_b = stack.workers[-1][1]
    wait_until_scraped(stack.prometheus_url, [port_b])
    client.pump([x], timeout=30)
    report.steps.append(f"X answered {report.finals[x].get('code') or report.finals[x]['type']}")
    y = client.infer("slow", "this job will be reclaimed and re-run", kind="reclaim", deadline_ms=60_000)
    report.steps.append(f"B busy with Y: {_wait_busy(stack, port_b)}")
    worker_b.signal(signal.SIGSTOP)
    worker_a.signal(signal.SIGCONT)
    try:
        client.pump([y], timeout=30)
    finally:
        worker_b.signal(signal.SIGCONT)
    report.steps.append(f"Y answered {report.finals[y].get('code') or report.finals[y]['type']}")


def drive_load(stack: Stack) -> LoadReport:
    report = LoadReport()
    client = Client(stack.gateway_ws, report)
    try:
        normal_traffic(client)
        report.steps.append("normal traffic answered")
        client.infer("no-such-task", "nobody serves this", kind="unknown")
        client.pump()
        _send_garbage(stack.gateway_ws, report)
        report.steps.append(f"invalid frame: {report.invalid_frame_answer}")
        overload(stack, report)
        report.steps.append(f"after overload: {dict(report.outcomes())}")
        recovery(stack, report, client)
        normal_traffic(client)
    finally:
        client.close()
    return report


@dataclass
class LiveRun:
    """A stack after `drive_load`: what the live tests query."""

    stack: Stack
    report: LoadReport

    def query(self, promql: str) -> list[dict[str, Any]]:
        return prom_query(self.stack.prometheus_url, promql)
