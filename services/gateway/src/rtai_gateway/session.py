"""A client session as one gateway holds it: identity, the socket now attached (if any), and what it was sent.

A session outlives its socket: frames are numbered (`seq`) and logged in Redis, so a client that reconnects, here or
to another gateway, resumes from the last seq it saw.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from rtai_gateway.connection import Connection
from rtai_protocol import FINAL_TYPES, with_seq

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
    """Live frames that arrived while the log was being replayed or a gap filled; sent after it, in order."""
    fill_gap: Callable[[Session], None] | None = None
    """Reads the session log after `delivered` and hands what it read to `end_fill` (the hub's; None: no gap filling).
    Numbers are given out in Redis, so a frame another gateway numbered (and forwards, or died before forwarding) can
    come after newer frames this gateway numbered itself. Sending those first would lose it: the client drops what is
    not above its last seq, and a resume starts after that."""
    filling_to: int = 0
    """While a gap is being filled: the highest seq held when the read began (0: no fill running)."""
    requests: set[str] = field(default_factory=set)
    """Request ids of this session in flight on this gateway."""
    detached_at: float | None = None
    finals: dict[str, None] = field(default_factory=dict)
    """The last FINALS_KEPT request ids that got their final frame here, oldest first."""

    unlogged_finals: dict[str, Connection] = field(default_factory=dict)
    """The last FINALS_KEPT request ids whose final frame went out unnumbered (Redis was down when the gateway ended
    them), with the socket it was offered to. A final logged for one later (the worker's result, once Redis is back)
    is not sent on that socket. Another socket (a resume) gets it: the unnumbered frame may have died with the old
    socket, and a second final, which clients ignore, is better than none."""

    def sent_unlogged_final(self, request_id: str, body: bytes) -> None:
        """Offer a final frame that could not be logged (and so cannot be replayed) to the socket, unnumbered."""
        if self.conn is None or not self.conn.offer(body):
            return  # never sent: the result, if one is logged later, is this request's final frame
        self.unlogged_finals[request_id] = self.conn
        if len(self.unlogged_finals) > FINALS_KEPT:
            del self.unlogged_finals[next(iter(self.unlogged_finals))]

    def has_unlogged_final(self, request_id: str) -> bool:
        """Whether the socket now attached got an unnumbered final frame for `request_id`."""
        return self.conn is not None and self.unlogged_finals.get(request_id) is self.conn

    def takes_logged_final(self, request_id: str) -> bool:
        """Whether a logged final frame for `request_id` may go to the socket (noting it if so): neither a final sent
        before nor one sent unnumbered to this very socket while Redis was down."""
        return not self.has_unlogged_final(request_id) and self.first_final(request_id)

    def deliver_final(self, request_id: str, seq: int, body: bytes, *, repeat: bool = False) -> None:
        """A final frame logged for `request_id` as number `seq`, found in Redis or forwarded by another gateway.

        A final logged new at or below what the socket was sent comes after a failover lost the counter's last
        increments once this gateway held the session (taking it over raised the counter to the client's last seq):
        with that number the client would drop it as seen. It goes unnumbered, noted for this socket only
        (`sent_unlogged_final`), so that if the socket dies before writing it, the request sent again after a resume
        gets its stored final. One more case looks the same here: a final whose first forward failed (it counts as new
        when its batch is read again), which the client got meanwhile from the log on another gateway. It then gets
        a second final, which clients ignore: the price of never losing the first case.

        `repeat`: the log script answered with the number the frame got the first time (a second run of a finished
        job), which the client may have had from another gateway before it came here. At or below what the socket was
        sent it is neither sent nor noted: a client that lacks it gets the stored final when it sends the request
        again. (A final whose first forward failed comes again as new: see `worker_replies`.)"""
        if seq > self.delivered:
            if self.takes_logged_final(request_id):
                self.deliver(seq, body)
        elif not repeat and request_id not in self.finals and not self.has_unlogged_final(request_id):
            self.sent_unlogged_final(request_id, body)

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
        """Send a numbered frame unless the client already has it; one that skips a number waits until the missing
        ones were read from the session log (`fill_gap`)."""
        if self.replaying or self.filling_to:
            self.held.append((seq, body))
            return
        if seq <= self.delivered or self.conn is None or self.conn.closed:
            return
        if seq > self.delivered + 1 and self.fill_gap is not None:
            self.held.append((seq, body))
            self.filling_to = seq
            self.fill_gap(self)
            return
        if self.conn.offer(with_seq(body, seq)):
            self.delivered = seq

    def end_fill(self, logged: list[tuple[int, bytes]]) -> None:
        """Send what the gap's read found in the log (frames after `delivered`) and the frames held meanwhile, in
        order. Up to the highest number the read covered, a number the log lacks (trimmed, lost in a failover) is
        skipped; a frame held after it that skips one starts another read. A logged final frame for a request that
        already had one here is not sent: a final sent unnumbered while Redis was down is not in the log."""
        covered = max([self.filling_to, *(seq for seq, _ in logged)])
        self.filling_to = 0
        frames = dict(self.held)
        self.held = []
        if self.replaying:  # a resume began meanwhile: its replay reads the log again, from the client's last seq
            self.held = sorted(frames.items())
            return
        for seq, body in logged:
            if seq in frames or seq <= self.delivered:
                continue
            request_id = _final_id(body)
            if request_id is None or self.takes_logged_final(request_id):
                frames[seq] = body
        for seq, body in sorted(frames.items()):
            if seq <= covered:
                self.deliver_replay(seq, body)
            else:
                self.deliver(seq, body)

    def deliver_replay(self, seq: int, body: bytes) -> None:
        """Send a frame read back from the session log (during a resume). A final frame is noted as sent: the client
        sends again every request it has no final for, and one it got here must not be answered twice."""
        if seq > self.delivered and self.conn is not None and self.conn.offer(with_seq(body, seq)):
            self.delivered = seq
            if (request_id := _final_id(body)) is not None:
                self.first_final(request_id)

    def send(self, body: bytes) -> None:
        """Send a frame that is not numbered (refusals of requests that were never accepted)."""
        if self.conn is not None:
            self.conn.offer(body)

    def end_replay(self) -> None:
        self.replaying = False
        held, self.held = sorted(self.held), []
        for seq, body in held:
            self.deliver(seq, body)


def _final_id(body: bytes) -> str | None:
    """The request id of a final frame read from the log; None for other frames."""
    try:
        frame = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(frame, dict) and frame.get("type") in FINAL_TYPES and isinstance(frame.get("id"), str):
        return str(frame["id"])
    return None
