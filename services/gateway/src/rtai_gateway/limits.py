"""Per-connection message rate (token bucket) and per-user connection counts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens per second up to `burst`; each client frame takes one. A frame without a token is refused
    with `retry_after_ms`: the time until the next token."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1 - 1e-9:  # float dust must not refuse a frame the rate allows
            self._tokens -= 1
            return True
        return False

    def retry_after_ms(self) -> int:
        return max(1, math.ceil((1 - self._tokens) / self.rate * 1000 - 1e-6))


class UserConnections:
    """Open sockets per identity on this gateway."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, identity: str) -> bool:
        n = self._open.get(identity, 0)
        if n >= self.limit:
            return False
        self._open[identity] = n + 1
        return True

    def release(self, identity: str) -> None:
        n = self._open.get(identity, 0) - 1
        if n > 0:
            self._open[identity] = n
        else:
            self._open.pop(identity, None)

    def count(self, identity: str) -> int:
        return self._open.get(identity, 0)
