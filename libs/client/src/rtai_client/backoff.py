"""Jittered exponential backoff, so a fleet of clients that lost one gateway does not reconnect in lockstep."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay before reconnect attempt `n` (0-based): random in [cap/2, cap], cap = min(max_s, base_s * factor**n).

    "Equal jitter": never zero (a restarting gateway is not hammered) and spread over half the window (no thundering
    herd after a deploy). `max_attempts=None` retries forever.
    """

    base_s: float = 0.25
    factor: float = 2.0
    max_s: float = 10.0
    max_attempts: int | None = 12
    stable_s: float = 5.0
    """A connection that stayed up this long starts the attempt count again at its next drop."""

    def cap(self, attempt: int) -> float:
        return min(self.max_s, self.base_s * self.factor ** min(attempt, 64))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        cap = self.cap(attempt)
        r = rng.random() if rng is not None else random.random()
        return cap / 2 + r * cap / 2

    def exhausted(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt >= self.max_attempts


def retry_delay(retry_after_ms: int | None, fallback_s: float, rng: random.Random | None = None) -> float:
    """How long to wait before retrying a refused request: the server's `retry_after_ms` plus up to 20% jitter."""
    base = retry_after_ms / 1000 if retry_after_ms is not None else fallback_s
    r = rng.random() if rng is not None else random.random()
    return base * (1 + 0.2 * r)
