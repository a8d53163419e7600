"""Fair admission across users: a per-user in-flight cap, a per-user queue at the gateway, round-robin release.

The task streams are FIFO, so a user who floods one would push everyone else's requests behind their backlog. Here a
user has at most `max_inflight_per_user` requests in the streams; the rest wait in that user's own queue at the
gateway and enter one by one as the user's earlier requests finish. A light user's request therefore enters the
stream behind at most the heavy user's cap, never behind the heavy user's whole backlog. When several users have
a free slot and queued work, they are served in turn (round robin). With `auth=none` each connection is a user.

Slots are counted per (identity, request id) this scheduler admitted, released by the hub's finish hook, or at once
when the hub did not keep the request (refused, or answered from the idempotency store).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

from rtai_gateway.admission import refusal
from rtai_gateway.guard_metrics import GuardMetrics
from rtai_gateway.hub import Hub
from rtai_gateway.pending import Pending
from rtai_gateway.session import Session
from rtai_gateway.settings import LimitSettings
from rtai_protocol import ErrorCode, Infer
from rtai_telemetry.logging import get_logger

log = get_logger("rtai_gateway.fairness")


@dataclass(slots=True)
class _Waiting:
    session: Session
    frame: Infer
    since: float


class FairScheduler:
    def __init__(self, hub: Hub, limits: LimitSettings, metrics: GuardMetrics) -> None:
        self._hub = hub
        self._cap = limits.max_inflight_per_user
        self._queue_cap = limits.max_queued_per_user
        self._total_cap = limits.max_queued_total
        self._retry_after_ms = hub.settings.admission.retry_after_ms
        self._metrics = metrics
        self.inflight: dict[str, int] = {}
        self._slots: set[tuple[str, str]] = set()
        self._queues: dict[str, deque[_Waiting]] = {}
        self._turns: deque[str] = deque()
        """Users with queued requests, in round-robin order."""
        self.queued = 0
        self._next_expiry = math.inf
        """No waiting request's deadline passes before this (monotonic s): until then a reaper pass skips the scan."""
        self.high_water = 0
        self._pump_task: asyncio.Task[None] | None = None
        self._admitting: dict[tuple[str, str], tuple[Session, asyncio.Future[None]]] = {}
        """Requests the pump took from a queue and is submitting now: neither waiting here nor tracked by the hub."""
        hub.finish_hooks.append(self._on_finish)
        hub.reap_hooks.append(self.expire_waiting)

    async def submit(self, session: Session, frame: Infer) -> None:
        user = session.identity
        key = (user, frame.id)
        if key in self._slots or key in self._hub.pending:
            await self._hub.submit(session, frame)  # a retry of a request in flight: the hub answers it, no new slot
            return
        queue = self._queues.get(user)
        if queue is None and self.inflight.get(user, 0) < self._cap:
            await self._admit(session, frame, user)
            return
        waiting = None if queue is None else next((w for w in queue if w.frame.id == frame.id), None)
        if waiting is not None and waiting.session is session:
            return  # a retry of a request still waiting here: it will be answered once, when it runs
        if waiting is not None and waiting.session.conn is None and queue is not None:
            queue.remove(waiting)  # left by a session that went away (the pump would skip it): this copy replaces it
            self._count(-1)
            waiting = None
        if waiting is not None:
            msg = "this request id is waiting in another session; resume that session"
            session.send(refusal(frame.id, ErrorCode.DUPLICATE_REQUEST, msg))
            return
        if (
            self.queued >= self._total_cap
            or (queue is not None and len(queue) >= self._queue_cap)
            or not self._queue_cap
        ):
            msg = f"at most {self._cap} requests in flight and {self._queue_cap} waiting per user"
            session.send(self._hub.refused(frame, ErrorCode.OVERLOADED, msg, self._retry_after_ms, "inflight"))
            return
        if queue is None:
            queue = self._queues[user] = deque()
            self._turns.append(user)
        w = _Waiting(session, frame, time.monotonic())
        queue.append(w)
        self._next_expiry = min(self._next_expiry, self._expiry(w))
        self._count(+1)
        self.high_water = max(self.high_water, len(queue))
        self._metrics.user_queue_high_water.set(self.high_water)

    def cancel_waiting(self, session: Session, request_id: str) -> Infer | None:
        """Remove a request that still waits here (never accepted, so it has no seq); None if there is none."""
        queue = self._queues.get(session.identity)
        if queue is None:
            return None
        for w in queue:
            if w.frame.id == request_id and w.session is session:
                queue.remove(w)
                self._count(-1)
                return w.frame
        return None

    async def admitted(self, session: Session, request_id: str) -> None:
        """Wait until the request, if the pump is submitting it right now, is tracked by the hub (or refused).

        Its SUBMIT is one Redis round trip; a cancel that lands during it would otherwise find the request nowhere,
        be refused, and the request would run anyway."""
        admitting = self._admitting.get((session.identity, request_id))
        if admitting is not None and admitting[0] is session:
            await asyncio.shield(admitting[1])

    def waiting_for(self, session: Session) -> int:
        queue = self._queues.get(session.identity)
        return 0 if queue is None else sum(1 for w in queue if w.session is session)

    async def _admit(self, session: Session, frame: Infer, user: str) -> None:
        key = (user, frame.id)
        if key in self._slots:  # one id holds one slot, whichever session sent it (the hub answers a copy)
            await self._hub.submit(session, frame)
            return
        self._slots.add(key)
        self.inflight[user] = self.inflight.get(user, 0) + 1
        try:
            await self._hub.submit(session, frame)
        finally:
            if key not in self._hub.pending:
                self._release(key)

    def _on_finish(self, p: Pending) -> None:
        self._release(p.key)

    def _release(self, key: tuple[str, str]) -> None:
        if key not in self._slots:
            return
        self._slots.discard(key)
        user = key[0]
        n = self.inflight.get(user, 0) - 1
        if n > 0:
            self.inflight[user] = n
        else:
            self.inflight.pop(user, None)
        if user in self._queues and (self._pump_task is None or self._pump_task.done()):
            self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name="fair-pump")

    async def _pump(self) -> None:
        while (w := self._next()) is not None:
            key = (w.session.identity, w.frame.id)
            done = asyncio.get_running_loop().create_future()
            self._admitting[key] = (w.session, done)
            try:
                await self._admit(w.session, w.frame, w.session.identity)
            except Exception:
                log.exception("fairness.admit_failed", request_id=w.frame.id)
                w.session.send(refusal(w.frame.id, ErrorCode.INTERNAL, "internal error"))
            finally:
                del self._admitting[key]
                done.set_result(None)

    def _next(self) -> _Waiting | None:
        """The next waiting request whose user has a free slot, taking users in turn."""
        at_cap = 0  # users passed over since a request last left a queue; all of them: nothing to release now
        while self._turns and at_cap < len(self._turns):
            user = self._turns.popleft()
            queue = self._queues.get(user)
            if not queue:
                self._queues.pop(user, None)
                continue
            if self.inflight.get(user, 0) >= self._cap:
                self._turns.append(user)
                at_cap += 1
                continue
            at_cap = 0
            w = queue.popleft()
            self._count(-1)
            if queue:
                self._turns.append(user)
            else:
                del self._queues[user]
            if w.session.conn is None:
                continue  # the client went away before its turn; it resumes and retries with the same id
            frame = self._with_remaining_budget(w)
            if frame is not None:
                return _Waiting(w.session, frame, w.since)
        return None

    def expire_waiting(self) -> None:
        """End the waiting requests whose deadline passed (a reaper pass): a slot may not free for minutes (long
        generations), and a deadline must hold while the request waits for one too."""
        now = time.monotonic()
        if not self.queued or now < self._next_expiry:
            return  # one comparison per pass until a deadline may have passed: the queues can hold thousands
        self._next_expiry = math.inf
        for user, queue in list(self._queues.items()):
            late = [w for w in queue if self._left_ms(w, now) <= 0]
            for w in late:
                queue.remove(w)
                self._count(-1)
                self._refuse_late(w)
            if not queue:
                del self._queues[user]
                self._turns.remove(user)
            for w in queue:
                self._next_expiry = min(self._next_expiry, self._expiry(w))

    def _budget_ms(self, w: _Waiting) -> int:
        d = self._hub.settings.deadlines
        return min(w.frame.options.deadline_ms or d.default_ms, d.max_ms)

    def _expiry(self, w: _Waiting) -> float:
        return w.since + self._budget_ms(w) / 1000

    def _left_ms(self, w: _Waiting, now: float) -> int:
        """The deadline counts from the gateway's receipt: time spent waiting here comes off the budget."""
        return self._budget_ms(w) - int((now - w.since) * 1000)

    def _refuse_late(self, w: _Waiting) -> None:
        # Through the hub's refusal: it counts the outcome under a known task name only (client-chosen names must not
        # become label values).
        w.session.send(
            self._hub.refused(w.frame, ErrorCode.DEADLINE_EXCEEDED, "the deadline passed while waiting for a slot")
        )

    def _with_remaining_budget(self, w: _Waiting) -> Infer | None:
        """The frame with what is left of its deadline, or None (refused) if nothing is."""
        left = self._left_ms(w, time.monotonic())
        if left <= 0:
            self._refuse_late(w)
            return None
        return w.frame.model_copy(update={"options": w.frame.options.model_copy(update={"deadline_ms": left})})

    def _count(self, delta: int) -> None:
        self.queued += delta
        self._metrics.user_queued.set(self.queued)
