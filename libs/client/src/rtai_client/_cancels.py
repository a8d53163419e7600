"""Cancels sent and not answered yet, so that a cancel the gateway's rate limit refused is sent again.

The gateway answers a frame over its per-connection rate limit with an unnumbered `rate_limited` that carries the
frame's id, a cancel's included: the same error a refused `infer` gets. While a cancel for an id is pending, such a
refusal is taken as the cancel's (the infer was sent first and is usually answered already): the cancel is sent again
after `retry_after_ms`. Taken wrongly (both were over the limit), the cancel sent again is answered `invalid_request`
("not in flight"), which tells the client that nothing of the request is on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from rtai_client.backoff import retry_delay
from rtai_protocol import Error

NOT_IN_FLIGHT = "invalid_request"
"""The gateway's answer to a cancel of an id it has nothing in flight for."""


class Cancels:
    def __init__(self, resend: Callable[[str], None], fallback_s: float) -> None:
        """`resend(id)` sends the cancel again (called from a timer)."""
        self._resend = resend
        self._fallback_s = fallback_s
        self._pending: dict[str, asyncio.TimerHandle | None] = {}
        """id -> the timer of its cancel's next sending, if one is scheduled."""

    def __contains__(self, rid: object) -> bool:
        return rid in self._pending

    def sent(self, rid: str) -> None:
        """A cancel for `rid` is (about to be) sent: marked before the send, whose answer may be read before it
        returns."""
        if (timer := self._pending.get(rid)) is not None:
            timer.cancel()
        self._pending[rid] = None

    def refused(self, err: Error) -> None:
        """The gateway refused the cancel (`rate_limited`): send it again after `retry_after_ms`, plus jitter."""
        assert err.id is not None
        if (timer := self._pending.get(err.id)) is not None:
            timer.cancel()
        delay = retry_delay(err.retry_after_ms, self._fallback_s)
        self._pending[err.id] = asyncio.get_running_loop().call_later(delay, self._resend, err.id)

    def answered(self, rid: str) -> None:
        """The request ended (its final frame came) or the cancel was answered: nothing more to send for it."""
        if (timer := self._pending.pop(rid, None)) is not None:
            timer.cancel()

    def clear(self) -> list[str]:
        """Forget every pending cancel (the connection is gone: the next one sends what is still needed) and return
        their ids."""
        ids = list(self._pending)
        for rid in ids:
            self.answered(rid)
        return ids
