"""Token bucket, per-user connection counts and the origin allowlist."""

from __future__ import annotations

from rtai_gateway.limits import TokenBucket, UserConnections
from rtai_gateway.origin import origin_allowed


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_allows_a_burst_then_the_rate_and_says_when_to_retry() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.retry_after_ms() == 100
    clock.t += 0.05
    assert not bucket.take()
    assert bucket.retry_after_ms() == 50
    clock.t += 0.05
    assert bucket.take()
    clock.t += 100
    assert sum(bucket.take() for _ in range(20)) == 5  # refills to the burst, not beyond


def test_user_connections_are_counted_per_identity() -> None:
    users = UserConnections(limit=2)
    assert users.acquire("a")
    assert users.acquire("a")
    assert not users.acquire("a")
    assert users.acquire("b")
    users.release("a")
    assert users.acquire("a")
    users.release("a")
    users.release("a")
    assert users.count("a") == 0


def test_origins() -> None:
    allowed = ["https://app.example.com"]
    assert origin_allowed(None, "gw:8000", allowed)  # not a browser
    assert origin_allowed("https://app.example.com", "gw:8000", allowed)
    assert origin_allowed("HTTPS://APP.EXAMPLE.COM", "gw:8000", allowed)
    assert origin_allowed("http://gw:8000", "gw:8000", allowed)  # the gateway's own page
    assert not origin_allowed("https://evil.example", "gw:8000", allowed)
    assert not origin_allowed("https://app.example.com.evil.example", "gw:8000", allowed)
    assert not origin_allowed("null", "gw:8000", allowed)
    assert not origin_allowed("https://evil.example", "gw:8000", [])
    assert origin_allowed("https://evil.example", "gw:8000", ["*"])
