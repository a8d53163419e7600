"""A session sends its numbered frames in order: a frame that skips a number waits while the missing ones are read
from the session log (the hub's reader is replaced here by a list of calls; the live path is in
tests/integration/test_handover.py)."""

from __future__ import annotations

from typing import Any

import orjson

from rtai_gateway.session import Session


class FakeConn:
    def __init__(self) -> None:
        self.closed = False
        self.frames: list[dict[str, Any]] = []

    def offer(self, body: bytes) -> bool:
        self.frames.append(orjson.loads(body))
        return True

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames]


def frame(kind: str, rid: str) -> bytes:
    return orjson.dumps({"type": kind, "id": rid})


def session_with_reads() -> tuple[Session, FakeConn, list[int]]:
    """A session whose gap reads are recorded (the `delivered` each began from) instead of run."""
    conn = FakeConn()
    reads: list[int] = []
    s = Session(id="s", identity="anon:s", conn=conn, fill_gap=lambda s: reads.append(s.delivered))  # type: ignore[arg-type]
    return s, conn, reads


def test_frames_in_order_go_out_at_once_without_a_read() -> None:
    s, conn, reads = session_with_reads()
    for seq in (1, 2, 3):
        s.deliver(seq, frame("accepted", f"r{seq}"))
    assert conn.seqs == [1, 2, 3]
    assert reads == []


def test_a_frame_that_skips_a_number_waits_for_it_to_be_read_from_the_log() -> None:
    s, conn, reads = session_with_reads()
    s.deliver(1, frame("accepted", "a"))
    s.deliver(3, frame("accepted", "b"))  # 2 was numbered by another gateway
    s.deliver(4, frame("result", "b"))  # arrives while the read runs
    assert conn.seqs == [1]
    assert reads == [1]
    s.end_fill([(2, frame("result", "a")), (3, frame("accepted", "b"))])
    assert conn.seqs == [1, 2, 3, 4]
    assert [f["id"] for f in conn.frames] == ["a", "a", "b", "b"]
    s.deliver(2, frame("result", "a"))  # the other gateway's forward, late: already sent
    s.deliver(5, frame("accepted", "c"))
    assert conn.seqs == [1, 2, 3, 4, 5]
    assert reads == [1]


def test_a_number_the_log_no_longer_has_is_skipped() -> None:
    s, conn, reads = session_with_reads()
    s.deliver(1, frame("accepted", "a"))
    s.deliver(4, frame("accepted", "b"))
    s.end_fill([])  # 2 and 3 were trimmed, or lost in a failover
    assert conn.seqs == [1, 4]
    s.deliver(5, frame("result", "b"))
    assert conn.seqs == [1, 4, 5]
    assert reads == [1]


def test_a_logged_final_for_a_request_that_already_had_one_is_not_sent() -> None:
    s, conn, _ = session_with_reads()
    s.deliver(1, frame("accepted", "a"))
    assert s.first_final("a")  # its final went out unnumbered while Redis was down
    s.deliver(3, frame("accepted", "b"))
    s.end_fill([(2, frame("result", "a")), (3, frame("accepted", "b"))])
    assert conn.seqs == [1, 3]
    s.deliver(4, frame("result", "b"))
    assert conn.seqs == [1, 3, 4]


def test_a_final_sent_unnumbered_while_redis_was_down_is_not_followed_by_its_logged_result() -> None:
    s, conn, _ = session_with_reads()
    s.deliver(5, frame("accepted", "a"))
    s.end_fill([])
    s.sent_unlogged_final("a", frame("error", "a"))  # the reaper expired it while Redis was down
    # Redis is back: the worker's result is logged at 6 (the hub does not deliver it: `takes_logged_final`), and the
    # next frame, 7, skips it; the gap's read finds the result in the log.
    assert not s.takes_logged_final("a")
    s.deliver(7, frame("accepted", "b"))
    s.end_fill([(6, frame("result", "a")), (7, frame("accepted", "b"))])
    assert [(f["type"], f["id"]) for f in conn.frames] == [("accepted", "a"), ("error", "a"), ("accepted", "b")]


def test_a_frame_held_during_a_read_that_skips_another_number_starts_another_read() -> None:
    s, conn, reads = session_with_reads()
    s.deliver(1, frame("accepted", "a"))
    s.deliver(3, frame("accepted", "b"))
    s.deliver(6, frame("accepted", "c"))  # 4 and 5 were numbered after the read began
    s.end_fill([(2, frame("result", "a")), (3, frame("accepted", "b"))])
    assert conn.seqs == [1, 2, 3]
    assert reads == [1, 3]
    s.end_fill([(4, frame("result", "b")), (5, frame("accepted", "d")), (6, frame("accepted", "c"))])
    assert conn.seqs == [1, 2, 3, 4, 5, 6]


def test_a_resume_during_a_read_leaves_the_held_frames_to_its_replay() -> None:
    s, conn, _ = session_with_reads()
    s.deliver(1, frame("accepted", "a"))
    s.deliver(3, frame("accepted", "b"))
    s.replaying = True  # as lifecycle._resume: a new socket, replayed from the client's last seq
    s.end_fill([(2, frame("result", "a"))])
    assert conn.seqs == [1]
    assert s.held == [(3, frame("accepted", "b"))]
    s.delivered = 2  # the replay sent 2
    s.end_replay()
    assert conn.seqs == [1, 3]


def test_no_read_for_a_socket_that_is_closing() -> None:
    s, conn, reads = session_with_reads()
    s.deliver(1, frame("accepted", "a"))
    conn.closed = True
    s.deliver(3, frame("accepted", "b"))
    assert reads == []
    assert conn.seqs == [1]
