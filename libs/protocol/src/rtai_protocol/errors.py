"""Error codes on the wire and the protocol's exception.

Codes are stable machine strings. Clients must treat a code they do not know as a generic failure (the server may add
codes), which is why frames carry `code: str`, not this enum.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    """The frame is not JSON, has the wrong shape, or the input breaks a task limit. Not retryable as is."""
    UNKNOWN_TASK = "unknown_task"
    """No live worker serves that task."""
    DUPLICATE_REQUEST = "duplicate_request"
    """That request id is already in flight on another session of the same identity."""
    OVERLOADED = "overloaded"
    """Backlog or in-flight limit reached; retry after `retry_after_ms`."""
    RATE_LIMITED = "rate_limited"
    """Too many messages per second on this connection; retry after `retry_after_ms`."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """No result within the request's deadline."""
    CANCELLED = "cancelled"
    """The client cancelled the request."""
    UNAVAILABLE = "unavailable"
    """The backend (Redis) cannot be reached right now; retry after `retry_after_ms`."""
    FAILED = "failed"
    """The job failed repeatedly (it was dead-lettered) or could not be re-run faithfully."""
    UNAUTHENTICATED = "unauthenticated"
    """Missing or invalid credentials."""
    INTERNAL = "internal"
    """A bug on our side. Never carries internals."""


RETRYABLE: frozenset[str] = frozenset(
    {ErrorCode.OVERLOADED, ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE, ErrorCode.DEADLINE_EXCEEDED}
)


class ProtocolError(Exception):
    """A frame that cannot be accepted. Carries the code and a message safe to show to the client."""

    def __init__(self, code: ErrorCode, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
