"""The session log in Redis: every numbered frame of a session, in seq order.

Frames are numbered and appended by LOG_FRAME (Lua in rtai_transport.lua), pipelined by the frame log; the log is
what a resume replays and what fills a socket's gap when a frame skipped a number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rtai_gateway.connection import WS_1013_TRY_AGAIN_LATER, Connection
from rtai_gateway.framelog import FrameLog
from rtai_gateway.session import Session
from rtai_gateway.settings import SessionSettings
from rtai_telemetry.logging import get_logger
from rtai_transport import Keys, Redis
from rtai_transport.lua import LOG_FRAME

log = get_logger("rtai_gateway.session_log")


class SessionLog:
    def __init__(self, redis: Redis, keys: Keys, settings: SessionSettings, framelog: FrameLog) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self.framelog = framelog
        self._log_frame = redis.register_script(LOG_FRAME)
        self._gap_reads: set[asyncio.Task[None]] = set()

    def _keys(self, session: str, owner: str, request_id: str) -> list[str]:
        k = self.keys
        return [
            k.session_seq(session),
            k.session_log(session),
            k.session_meta(session),
            k.request(owner, request_id),
            k.session_inflight(session),
        ]

    def append(
        self,
        session: Session | None,
        session_id: str,
        owner: str,
        request_id: str,
        body: bytes,
        kind: str,
        index: int,
        then: Callable[[Any], None],
        after_chunk: int | None = None,
    ) -> asyncio.Future[None]:
        """Number and log one frame of a request (LOG_FRAME, pipelined by the frame log). `session`, where this gateway
        holds it, gives the floor: never a number at or below what its socket was already sent. `after_chunk`: a chunk
        index of the same request submitted just before; the frame is held back (-1) unless that chunk is logged."""
        s = self.settings
        floor = session.delivered if session is not None else 0
        args = [body, kind, index, s.ttl_s, s.log_maxlen, request_id, s.request_ttl_s, floor]
        if after_chunk is not None:
            args.append(after_chunk + 1)
        return self.framelog.submit(session_id, self._log_frame, self._keys(session_id, owner, request_id), args, then)

    async def logged_after(self, session: Session) -> list[tuple[int, bytes]]:
        """The session log's frames numbered above what the session's socket was sent, as (seq, frame) in order."""
        entries: Any = await self.redis.xrange(
            self.keys.session_log(session.id), min=f"{session.delivered + 1}-0", max="+"
        )
        return [(int(entry_id.split(b"-")[0]), fields[b"f"]) for entry_id, fields in entries]

    def fill_gap(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(self._read_gap(session, session.conn))
        self._gap_reads.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._gap_reads.discard)

    async def _read_gap(self, session: Session, conn: Connection | None) -> None:
        """A frame skipped a number (`Session.deliver`): read the session log after what the socket has."""
        try:
            logged = await self.logged_after(session)
        except Exception as e:
            # The missing frame cannot be read now. Sending the newer ones would lose it for good; closing makes the
            # client resume from its last seq, and the replay sends the log in order.
            log.warning("session.gap_unread", session=session.id, error=type(e).__name__)
            if conn is not None and session.conn is conn:
                conn.close(WS_1013_TRY_AGAIN_LATER, "resume with your last seq")
            logged = []
        session.end_fill(logged)


def is_repeat(res: Any) -> bool:
    """Whether a LOG_FRAME answer is a repeat's: the frame was logged before, under the number the answer gives."""
    return len(res) > 2


def logged_body(res: Any, sent: bytes) -> bytes:
    """The frame a LOG_FRAME answer stands for: a repeat comes back with the body logged the first time (the one the
    log replays on resume), a new frame is the one sent."""
    return bytes(res[2]) if is_repeat(res) else sent
