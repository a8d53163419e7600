"""A client session as one gateway holds it: identity, the socket now attached (if any), and what it was sent.

A session outlives its socket: frames are numbered (`seq`) and logged in Redis, so a client that reconnects, here or
to another gateway, resumes from the last seq it saw.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from rtai_gateway.connection import Connection
from rtai_protocol import with_seq

FINALS_KEPT = 256
"""Request ids per session whose final frame was sent, remembered to refuse a second one (see `Session.first_final`)."""


def new_session_id() -> str:
    # The session id is also the resume token: 128 random bits, so it cannot be guessed.
    return secrets.token_urlsafe(16)


@dataclass(eq=False)
class Session:
    id: str
    identity: str
    conn: Connection | None = None
    delivered: int = 0
    """Highest seq sent on the current socket (the client resumes from the highest it saw)."""
    replaying: bool = False
    held: list[tuple[int, bytes]] = field(default_factory=list)
    """Live frames that arrived while the log was being replayed; sent after it, in order."""
    requests: set[str] = field(default_factory=set)
    """Request ids of this session in flight on this gateway."""
    detached_at: float | None = None
    finals: dict[str, None] = field(default_factory=dict)
    """The last FINALS_KEPT request ids that got their final frame here, oldest first."""

    def first_final(self, request_id: str) -> bool:
        """Note a final frame for `request_id`; False if this session already got one. The log script refuses a second
        final for a request, but a failover can lose the request's stored final (asynchronous replication) while the
        client already has it: a re-run's result must not reach the client as a second final."""
        if request_id in self.finals:
            return False
        self.finals[request_id] = None
        if len(self.finals) > FINALS_KEPT:
            del self.finals[next(iter(self.finals))]
        return True

    def deliver(self, seq: int, body: bytes) -> None:
        """Send a numbered frame unless the client already has it."""
        if self.replaying:
            self.held.append((seq, body))
            return
        if seq <= self.delivered or self.conn is None:
            return
        if self.conn.offer(with_seq(body, seq)):
            self.delivered = seq

    def deliver_replay(self, seq: int, body: bytes) -> None:
        """Send a frame read back from the session log (during a resume)."""
        if seq > self.delivered and self.conn is not None and self.conn.offer(with_seq(body, seq)):
            self.delivered = seq

    def send(self, body: bytes) -> None:
        """Send a frame that is not numbered (refusals of requests that were never accepted)."""
        if self.conn is not None:
            self.conn.offer(body)

    def end_replay(self) -> None:
        self.replaying = False
        held, self.held = sorted(self.held), []
        for seq, body in held:
            self.deliver(seq, body)
