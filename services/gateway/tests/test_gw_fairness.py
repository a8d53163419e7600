"""Fair admission: per-user caps, per-user queues, round-robin release, bounded queues, deadlines while waiting."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rtai_gateway import ws
from rtai_gateway.admission import refusal
from rtai_gateway.fairness import FairScheduler
from rtai_gateway.guard_metrics import GuardMetrics
from rtai_gateway.metrics import GatewayMetrics
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings, LimitSettings
from rtai_protocol import Cancel, Infer


class FakeConn:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def offer(self, body: bytes) -> bool:
        self.frames.append(body)
        return True


@dataclass(eq=False)
class FakePending:
    key: tuple[str, str]
    session: Session


@dataclass
class FakeHub:
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    pending: dict[tuple[str, str], Any] = field(default_factory=dict)
    finish_hooks: list[Any] = field(default_factory=list)
    reap_hooks: list[Any] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    """Request ids whose submit waits on an event: a SUBMIT's Redis round trip, held open."""

    async def submit(self, session: Session, frame: Infer) -> None:
        self.order.append(frame.id)
        if frame.id in self.gates:
            await self.gates[frame.id].wait()
        if frame.id not in self.refuse:
            self.pending[(session.identity, frame.id)] = FakePending((session.identity, frame.id), session)

    def refused(
        self, req: Infer, code: str, message: str, retry_after_ms: int | None = None, reason: str | None = None
    ) -> bytes:
        return refusal(req.id, code, message, retry_after_ms)

    def finish(self, identity: str, rid: str) -> None:
        p = self.pending.pop((identity, rid))
        for hook in self.finish_hooks:
            hook(p)


def make(cap: int = 2, queued: int = 100, total: int = 1000) -> tuple[FakeHub, FairScheduler]:
    hub = FakeHub()
    limits = LimitSettings(max_inflight_per_user=cap, max_queued_per_user=queued, max_queued_total=total)
    return hub, FairScheduler(hub, limits, GuardMetrics(CollectorRegistry()))  # type: ignore[arg-type]


def user(name: str) -> Session:
    return Session(id=name, identity=name, conn=FakeConn())  # type: ignore[arg-type]


def infer(rid: str, **options: Any) -> Infer:
    return Infer(type="infer", id=rid, task="sentiment", input="x", options=options or {})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_light_user_overtakes_a_heavy_users_backlog() -> None:
    hub, sched = make(cap=2)
    heavy, light = user("heavy"), user("light")
    for i in range(10):
        await sched.submit(heavy, infer(f"h{i}"))
    await sched.submit(light, infer("l0"))
    assert hub.order == ["h0", "h1", "l0"]
    assert sched.queued == 8
    for i in range(10):
        hub.finish("heavy", f"h{i}")
        await settle()
    assert hub.order == ["h0", "h1", "l0", *(f"h{i}" for i in range(2, 10))]
    assert sched.queued == 0
    assert sched.inflight == {"light": 1}


async def test_waiting_users_are_released_in_turn() -> None:
    hub, sched = make(cap=1)
    a, b = user("a"), user("b")
    for i in range(3):
        await sched.submit(a, infer(f"a{i}"))
        await sched.submit(b, infer(f"b{i}"))
    assert hub.order == ["a0", "b0"]
    for i in range(2):
        hub.finish("a", f"a{i}")
        hub.finish("b", f"b{i}")
        await settle()
    assert hub.order == ["a0", "b0", "a1", "b1", "a2", "b2"]


async def test_refused_or_duplicate_requests_do_not_leak_slots() -> None:
    hub, sched = make(cap=1)
    u = user("u")
    hub.refuse.add("bad")
    await sched.submit(u, infer("bad"))  # refused by the hub (unknown task, overloaded...): slot given back at once
    await sched.submit(u, infer("ok"))
    await sched.submit(u, infer("ok"))  # a retry of a request in flight: passed through, no second slot
    assert hub.order == ["bad", "ok", "ok"]
    assert sched.inflight == {"u": 1}
    await sched.submit(u, infer("w"))
    await sched.submit(u, infer("w"))  # a retry of a waiting request: it waits once
    assert sched.queued == 1
    hub.finish("u", "ok")
    await settle()
    assert hub.order[-1] == "w"
    assert sched.queued == 0


async def test_queues_are_bounded_per_user_and_in_total() -> None:
    _hub, sched = make(cap=1, queued=2, total=3)
    a, b = user("a"), user("b")
    for i in range(4):
        await sched.submit(a, infer(f"a{i}"))
    assert sched.queued == 2
    assert b"overloaded" in a.conn.frames[-1]
    assert sched.high_water == 2
    for i in range(3):
        await sched.submit(b, infer(f"b{i}"))
    assert sched.queued == 3
    assert b'"id":"b2"' in b.conn.frames[-1]


async def test_cancel_and_deadline_while_waiting() -> None:
    hub, sched = make(cap=1)
    u = user("u")
    await sched.submit(u, infer("first"))
    await sched.submit(u, infer("cancel-me"))
    await sched.submit(u, infer("expires", deadline_ms=1))
    await sched.submit(u, infer("runs"))
    assert sched.cancel_waiting(u, "cancel-me") is not None
    assert sched.cancel_waiting(u, "cancel-me") is None
    await asyncio.sleep(0.01)
    hub.finish("u", "first")
    await settle()
    assert hub.order == ["first", "runs"]
    assert any(b"deadline_exceeded" in f and b"expires" in f for f in u.conn.frames)  # type: ignore[union-attr]


async def test_a_waiting_request_ends_at_its_deadline_while_no_slot_frees() -> None:
    """The user's slot is held by a long generation: a waiting request is answered `deadline_exceeded` by the reaper
    at its deadline, not when (if ever) a slot frees; the user's next request still queues behind the cap."""
    hub, sched = make(cap=1)
    u = user("u")
    await sched.submit(u, infer("long"))
    await sched.submit(u, infer("short", deadline_ms=20))
    await sched.submit(u, infer("patient"))
    for hook in hub.reap_hooks:  # a reaper pass before the deadline: nothing ends
        hook()
    assert sched.queued == 2
    await asyncio.sleep(0.03)
    for hook in hub.reap_hooks:
        hook()
    assert sched.queued == 1
    assert any(b"deadline_exceeded" in f and b'"short"' in f for f in u.conn.frames)  # type: ignore[union-attr]
    await sched.submit(u, infer("later", deadline_ms=10))
    await asyncio.sleep(0.02)
    for hook in hub.reap_hooks:
        hook()
    assert sched.queued == 1 and sched.waiting_for(u) == 1
    hub.finish("u", "long")
    await settle()
    assert hub.order == ["long", "patient"]
    await sched.submit(user("v"), infer("v0"))
    assert hub.order[-1] == "v0"


async def test_waiting_requests_of_a_gone_client_are_dropped() -> None:
    hub, sched = make(cap=1)
    u = user("u")
    await sched.submit(u, infer("a"))
    await sched.submit(u, infer("b"))
    u.conn = None
    hub.finish("u", "a")
    await settle()
    assert hub.order == ["a"]
    assert sched.queued == 0


async def test_a_cancel_that_lands_while_the_pump_submits_the_request_cancels_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub, sched = make(cap=1)
    cancelled: list[Any] = []

    async def cancel(p: Any, *, notify: bool) -> None:
        cancelled.append((p.key, notify))

    monkeypatch.setattr(hub, "cancel", cancel, raising=False)
    sock = SimpleNamespace(rt=SimpleNamespace(draining=False, hub=hub), guard=SimpleNamespace(scheduler=sched))
    u = user("u")
    hub.gates["second"] = asyncio.Event()
    await ws._dispatch(sock, u, infer("first"))  # type: ignore[arg-type]
    await ws._dispatch(sock, u, infer("second"))  # type: ignore[arg-type]
    assert sched.queued == 1
    hub.finish("u", "first")
    await settle()
    assert hub.order == ["first", "second"], "the pump is submitting the second request"
    cancelling = asyncio.create_task(ws._dispatch(sock, u, Cancel(type="cancel", id="second")))  # type: ignore[arg-type]
    await settle()
    assert not cancelling.done(), "the cancel waits for the submit it raced with"
    hub.gates["second"].set()
    await asyncio.wait_for(cancelling, 1)
    assert cancelled == [(("u", "second"), True)]
    assert not any(b"invalid_request" in f for f in u.conn.frames)  # type: ignore[union-attr]


async def test_a_cancel_for_another_sessions_request_does_not_wait_for_its_admission(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub, sched = make(cap=1)
    refuse = lambda *a, **k: pytest.fail("cancelled another session's request")  # noqa: E731
    monkeypatch.setattr(hub, "cancel", refuse, raising=False)
    sock = SimpleNamespace(rt=SimpleNamespace(draining=False, hub=hub), guard=SimpleNamespace(scheduler=sched))
    u = user("u")
    other = Session(id="other", identity="u", conn=FakeConn())  # type: ignore[arg-type]
    hub.gates["second"] = asyncio.Event()
    await sched.submit(u, infer("first"))
    await sched.submit(u, infer("second"))
    hub.finish("u", "first")
    await settle()
    await asyncio.wait_for(ws._dispatch(sock, other, Cancel(type="cancel", id="second")), 1)  # type: ignore[arg-type]
    assert b"invalid_request" in other.conn.frames[-1]  # type: ignore[union-attr]
    hub.gates["second"].set()
    await settle()


async def test_one_id_waiting_from_two_sessions_of_a_user_is_refused_once_and_leaks_no_slot() -> None:
    hub, sched = make(cap=1)
    a = user("u")
    b = Session(id="b", identity="u", conn=FakeConn())  # type: ignore[arg-type]
    await sched.submit(a, infer("running"))
    await sched.submit(a, infer("x"))
    await sched.submit(b, infer("x"))  # the same id from the user's other session, while the first copy waits
    assert b"duplicate_request" in b.conn.frames[-1]  # type: ignore[union-attr]
    assert sched.queued == 1
    hub.finish("u", "running")
    await settle()
    hub.finish("u", "x")
    await settle()
    assert hub.order == ["running", "x"]
    assert sched.inflight == {}, "a slot leaked: the user would wait for ever"


async def test_a_copy_left_waiting_by_a_session_that_went_away_is_replaced_by_the_new_one() -> None:
    hub, sched = make(cap=1)
    gone = user("u")
    await sched.submit(gone, infer("running"))
    await sched.submit(gone, infer("x"))
    gone.conn = None  # closed; the client reconnects in a new session and sends its request again
    back = Session(id="back", identity="u", conn=FakeConn())  # type: ignore[arg-type]
    await sched.submit(back, infer("x"))
    assert not any(b"duplicate_request" in f for f in back.conn.frames)  # type: ignore[union-attr]
    assert sched.queued == 1
    hub.finish("u", "running")
    await settle()
    assert hub.order == ["running", "x"]
