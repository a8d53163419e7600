"""One request as the client tracks it: the frame to (re)send and the frames that came back for it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from rtai_client.backoff import retry_delay
from rtai_client.errors import RequestError, RtaiError
from rtai_protocol import Chunk, Error, Result

Item = Chunk | Result | Error | RtaiError

RETRY_CODES = frozenset({"overloaded", "rate_limited", "unavailable"})
"""Refusals of requests the server never accepted that are worth sending again after `retry_after_ms`."""


@dataclass(eq=False)
class Call:
    id: str
    task: str
    input: str
    options: dict[str, Any]
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    accepted: bool = False
    next_index: int = 0
    """Index of the next chunk expected: a chunk below it is a repeat and is dropped."""
    done: bool = False
    """A final frame (or a client-side failure) was queued; frames that still arrive for this id are dropped."""
    started: bool = False
    """Its caller started it (a Stream starts when iterated): only started requests are sent, and sent again."""
    waiting: bool = False
    """Refused before it was accepted and waiting to be sent again: nothing of it is on the server."""
    sent_gen: int = -1
    """The connection generation this request was last sent on (sent once per connection, never twice)."""
    cancel_requested: bool = False
    result: Result | None = None
    budget_ms: int | None = None
    """The request's own deadline budget, if it set one: a copy sent again asks for what is left of it."""
    started_at: float = 0.0
    """Loop time its caller started it: the server counts a budget from its receipt, a copy's from here."""

    def size(self) -> int:
        """Bytes of its `infer` frame."""
        return len(json.dumps(self.frame()).encode())

    def frame(self) -> dict[str, Any]:
        f: dict[str, Any] = {"type": "infer", "id": self.id, "task": self.task, "input": self.input}
        if self.options:
            f["options"] = self.options
        return f

    def offer(self, item: Chunk | Result | Error) -> None:
        """Queue a frame that names this request; drop repeats and anything after the final frame. A retryable
        refusal does not end the request by itself: the caller's loop decides (retry, or raise it)."""
        if self.done:
            return
        if isinstance(item, Chunk):
            if item.index < self.next_index:
                return
            self.next_index = item.index + 1
            self.waiting = False  # it runs: a refusal's retry is moot
        elif not (isinstance(item, Error) and is_refusal(item)):
            self.done = True
        self.queue.put_nowait(item)

    def fail(self, exc: RtaiError) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(exc)

    @property
    def admitted(self) -> bool:
        """The server accepted it (an `accepted` frame or a chunk came): it runs, whatever a later copy is told."""
        return self.accepted or self.next_index > 0

    def retryable(self, err: Error) -> bool:
        return is_refusal(err) and not self.admitted and not self.cancel_requested

    def trim_budget(self, now: float) -> bool:
        """Ask for what is left of the budget (a copy sent again must not ask for the whole of it); False if nothing
        is left."""
        if self.budget_ms is None:
            return True
        left = int(self.budget_ms - (now - self.started_at) * 1000)
        self.options["deadline_ms"] = max(1, left)
        return left > 0

    def rearm(self) -> None:
        """Prepare to send again after a refusal."""
        self.waiting = False
        self.sent_gen = -1


def is_refusal(err: Error) -> bool:
    """An unnumbered `overloaded`, `rate_limited` or `unavailable`: this copy of the request was not admitted."""
    return err.seq is None and err.code in RETRY_CODES


@dataclass(eq=False)
class Retry:
    """When a refused request is sent again. Meanwhile its frames are still taken: an `unavailable` whose admission's
    answer was lost may be followed by the request's own frames. A refused copy of a request the server already
    admitted (one sent again after a reconnect) does not end it: it runs, and the copy is sent again later in case the
    server lost it."""

    call: Call
    retries: int
    fallback_s: float
    attempts: int = 0
    at: float | None = None
    """When to send the request again (None: no retry pending)."""
    copy: bool = False
    """The retry pending is of a refused copy of an admitted request (not counted against `retries`)."""

    def wake(self, end: float) -> float:
        return end if self.at is None else min(end, self.at)

    def on_error(self, err: Error, now: float, end: float) -> bool:
        """Schedule a retry for a refusal; False if the error ends the request."""
        call = self.call
        delay = retry_delay(err.retry_after_ms, self.fallback_s)
        if is_refusal(err) and call.cancel_requested and not call.admitted:
            self._cancelled()  # the cancel crossed the refusal: nothing of it is on the server
        if is_refusal(err) and call.admitted:
            if self.at is None:
                self.at = now + max(delay, self.fallback_s)
                self.copy = True
            return True
        if self.attempts >= self.retries or not call.retryable(err) or now + delay >= end:
            return False
        self.attempts += 1
        call.waiting = True
        self.at = now + delay
        return True

    def due(self, now: float) -> bool:
        """At a wake-up: whether to send the request again now. Raises `cancelled` for a request cancelled while it
        waited to be retried (nothing of it is on the server)."""
        self.at = None
        call = self.call
        if call.cancel_requested:
            if call.waiting:
                self._cancelled()
            return False  # the cancel went to the server, which ends the request
        if not (call.waiting or self.copy):
            return False  # admitted after all (its `accepted` or a chunk came meanwhile), or sent on a reconnect
        self.copy = False
        call.trim_budget(now)  # none left: sent with 1 ms, and the server answers `deadline_exceeded`
        call.rearm()
        return True

    def _cancelled(self) -> None:
        self.call.done = True
        raise RequestError(Error(id=self.call.id, code="cancelled", message="cancelled by the client"))
