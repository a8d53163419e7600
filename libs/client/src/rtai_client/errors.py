"""The SDK's exceptions: one base, one per kind of failure a caller handles differently."""

from __future__ import annotations

from rtai_protocol import Error


class RtaiError(Exception):
    """Base of every error the SDK raises."""


class RequestError(RtaiError):
    """The server ended a request with an `error` frame (after any retries the client made)."""

    def __init__(self, frame: Error) -> None:
        super().__init__(f"{frame.code}: {frame.message}" if frame.message else frame.code)
        self.frame = frame
        self.code = frame.code
        self.message = frame.message
        self.request_id = frame.id
        self.retry_after_ms = frame.retry_after_ms


class RequestTimeout(RtaiError):
    """No final frame arrived within the client-side timeout (the request's deadline plus a grace period)."""


class ConnectionLost(RtaiError):
    """The connection is gone and will not come back: closed by policy (1008, 1009), reconnects exhausted, or closed
    by the application. Requests in flight end with this error."""

    def __init__(self, message: str, close_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        """The error code the server sent before closing (e.g. `unauthenticated`), if any."""

    def again(self) -> ConnectionLost:
        """A new instance for one more caller, caused by this one: raising one instance again and again would grow
        its traceback with every raise (and keep every caller's frames alive)."""
        fresh = ConnectionLost(str(self), self.close_code, self.code)
        fresh.__cause__ = self
        return fresh


class SessionLost(RtaiError):
    """The server could not resume the session (expired, or another gateway's lost state) while a stream was half
    delivered: the rest of that stream cannot be recovered faithfully. Send the request again."""
