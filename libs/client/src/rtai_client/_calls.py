"""One request as the client tracks it: the frame to (re)send and the frames that came back for it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rtai_client.errors import RtaiError
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
    sent_gen: int = -1
    """The connection generation this request was last sent on (sent once per connection, never twice)."""
    cancel_requested: bool = False
    result: Result | None = None

    def frame(self) -> dict[str, Any]:
        f: dict[str, Any] = {"type": "infer", "id": self.id, "task": self.task, "input": self.input}
        if self.options:
            f["options"] = self.options
        return f

    def offer(self, item: Chunk | Result | Error) -> None:
        """Queue a frame that names this request; drop repeats and anything after the final frame."""
        if self.done:
            return
        if isinstance(item, Chunk):
            if item.index < self.next_index:
                return
            self.next_index = item.index + 1
        else:
            self.done = True
        self.queue.put_nowait(item)

    def fail(self, exc: RtaiError) -> None:
        if not self.done:
            self.done = True
            self.queue.put_nowait(exc)

    def retryable(self, err: Error) -> bool:
        return err.seq is None and err.code in RETRY_CODES and not self.accepted and not self.cancel_requested

    def rearm(self) -> None:
        """Prepare to send again after a refusal."""
        self.done = False
        self.sent_gen = -1
