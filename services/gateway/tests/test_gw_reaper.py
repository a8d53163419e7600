"""The reaper ends detached sessions whose grace ran out, oldest first, and leaves resumed and fresh ones alone (no
Redis: these sessions have no requests in flight, so ending them touches nothing outside the hub)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from rtai_gateway import lifecycle
from rtai_gateway.session import Session
from rtai_gateway.settings import GatewaySettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SessionsOnlyHub:
    def __init__(self, grace_s: float) -> None:
        self.settings = GatewaySettings(sessions={"detach_grace_s": grace_s})
        self.pending: dict[Any, Any] = {}
        self.sessions: dict[str, Session] = {}
        self.detached: dict[str, Session] = {}
        self.reap_hooks: list[Any] = []

    def add(self, sid: str) -> Session:
        s = Session(id=sid, identity=f"anon:{sid}", conn=object())  # type: ignore[arg-type]
        self.sessions[sid] = s
        return s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    # Only the lifecycle module's clock: the event loop keeps the real one.
    monkeypatch.setattr("rtai_gateway.lifecycle.time", SimpleNamespace(monotonic=c))
    return c


async def test_sessions_end_when_their_grace_runs_out_and_not_before(clock: Clock) -> None:
    hub: Any = SessionsOnlyHub(grace_s=10)
    for sid in ("attached", "a", "b", "c"):
        hub.add(sid)
    for sid, at in (("a", 1000.0), ("b", 1004.0), ("c", 1008.0)):
        clock.now = at
        await lifecycle.detach(hub, hub.sessions[sid], 1006)  # abnormal close: wait for a resume
    assert list(hub.detached) == ["a", "b", "c"]

    clock.now = 1009.9
    await lifecycle.reap(hub)
    assert set(hub.sessions) == {"attached", "a", "b", "c"}

    clock.now = 1014.5  # a's and b's grace are over, c's is not
    await lifecycle.reap(hub)
    assert set(hub.sessions) == {"attached", "c"}
    assert list(hub.detached) == ["c"]

    clock.now = 10_000.0  # an attached session is never reaped, however old
    await lifecycle.reap(hub)
    assert set(hub.sessions) == {"attached"}
    assert hub.detached == {}


async def test_a_session_detached_again_is_judged_by_its_latest_detach(clock: Clock) -> None:
    hub: Any = SessionsOnlyHub(grace_s=10)
    first, second = hub.add("first"), hub.add("second")
    await lifecycle.detach(hub, first, 1006)
    clock.now = 1001.0
    await lifecycle.detach(hub, second, 1006)
    # `first` comes back (as _resume does) and drops again later: it now expires after `second`.
    first.conn, first.detached_at = object(), None
    hub.detached.pop("first")
    clock.now = 1005.0
    await lifecycle.detach(hub, first, 1006)
    assert list(hub.detached) == ["second", "first"]

    clock.now = 1011.0
    await lifecycle.reap(hub)
    assert set(hub.sessions) == {"first"}

    clock.now = 1015.0
    await lifecycle.reap(hub)
    assert hub.sessions == {}


async def test_a_clean_close_ends_the_session_at_once(clock: Clock) -> None:
    hub: Any = SessionsOnlyHub(grace_s=10)
    s = hub.add("s")
    await lifecycle.detach(hub, s, 1000)
    assert hub.sessions == {} and hub.detached == {}
