"""Public WebSocket frames.

Client -> server frames are strict (`extra="forbid"`): a typo in a field name is an error, not a silent default.
Server -> client frames are tolerant (`extra="ignore"`) and carry error codes as plain strings, so an old client keeps
working against a newer server that adds fields or codes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROTOCOL_VERSION = 1

RequestId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")]
TaskName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$")]


def _whole(value: Any) -> Any:
    """Client frames are strict, but 5000.0 is the integer 5000 in JSON (and to the published schema's "integer"),
    and many encoders write computed numbers that way. 5000.5 stays a float, which the strict int refuses, as it
    refuses "5000"."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _ServerFrame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class InferOptions(_ClientFrame):
    stream: bool = False
    """Send partial output as `chunk` frames before the `result` (tasks whose model streams)."""
    deadline_ms: int | None = Field(default=None, ge=1, le=3_600_000)
    """Budget in ms from the gateway's receipt, capped by the server's maximum; absent: the server's default."""
    max_new_tokens: int | None = Field(default=None, ge=1, le=4096)
    """For generation: at most this many tokens (capped by the server)."""
    time_limit_s: float | None = Field(default=None, gt=0, le=3600)
    """For generation: stop after this many seconds of generating (capped by the server)."""
    temperature: float | None = Field(default=None, ge=0, le=2)
    """For generation: 0 is greedy (the default); above 0 samples, seeded per request so a re-run repeats itself."""

    _whole_numbers = field_validator("deadline_ms", "max_new_tokens", mode="before")(_whole)


class Hello(_ClientFrame):
    """Optional first frame: resume a session. Without it the server starts a new session."""

    type: Literal["hello"]
    v: int = Field(default=PROTOCOL_VERSION, ge=PROTOCOL_VERSION, le=PROTOCOL_VERSION)
    """The protocol version the client speaks; a server refuses one it does not (`invalid_request`)."""
    session: str | None = Field(default=None, max_length=128)
    """The `session` token from an earlier `welcome`, to resume that session."""
    last_seq: int = Field(default=0, ge=0, le=2**53 - 1)
    """The highest `seq` the client saw; every resumable frame after it is sent again. At most 2^53 - 1, the largest
    integer every JSON client (JavaScript's doubles) holds exactly; Redis stream ids would refuse larger ones."""

    _whole_numbers = field_validator("v", "last_seq", mode="before")(_whole)


class Infer(_ClientFrame):
    type: Literal["infer"]
    id: RequestId
    """Client-chosen request id; unique per identity while the request and its stored result live."""
    task: TaskName
    input: str
    options: InferOptions = InferOptions()


class Cancel(_ClientFrame):
    type: Literal["cancel"]
    id: RequestId


class Auth(_ClientFrame):
    """Credentials sent as the first frame, for clients that cannot put a token in the handshake (browsers without
    the `bearer.<token>` subprotocol). Must arrive within the server's auth timeout; never needed with auth off."""

    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=8192)
    """An API key or a JWT, as the server's auth mode expects."""


ClientFrame = Annotated[Hello | Infer | Cancel | Auth, Field(discriminator="type")]


class Welcome(_ServerFrame):
    """First server frame of a connection. `session` is the resume token: keep it secret, it grants the results."""

    type: Literal["welcome"] = "welcome"
    v: int = PROTOCOL_VERSION
    session: str
    resumed: bool = False
    last_seq: int = 0
    """The highest seq of the session so far."""
    gateway: str = ""
    max_frame_bytes: int = 0


class Accepted(_ServerFrame):
    type: Literal["accepted"] = "accepted"
    id: str
    seq: int | None = None
    task: str = ""
    deadline_ms: int = 0
    """The absolute deadline (Unix epoch ms) the server stamped on the job."""


class Chunk(_ServerFrame):
    type: Literal["chunk"] = "chunk"
    id: str
    seq: int | None = None
    index: int
    """0, 1, 2... within the request: a client can detect a gap or a repeat."""
    data: Any = None


class Result(_ServerFrame):
    type: Literal["result"] = "result"
    id: str
    seq: int | None = None
    output: Any = None


class Error(_ServerFrame):
    type: Literal["error"] = "error"
    id: str | None = None
    """The request this error ends, or null for an error about a frame that named no valid request id."""
    seq: int | None = None
    """Null for refusals of requests that were never accepted (they are not replayed on resume)."""
    code: str
    message: str = ""
    retry_after_ms: int | None = None


ServerFrame = Annotated[Welcome | Accepted | Chunk | Result | Error, Field(discriminator="type")]

FINAL_TYPES = frozenset({"result", "error"})
