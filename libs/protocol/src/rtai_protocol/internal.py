"""Messages between gateway and workers through Redis.

Tolerant (`extra="ignore"`) so a rolling deploy may mix versions: readers accept `v` N and N-1 and ignore fields they do
not know. Every message carries `headers` for W3C trace context (`traceparent`, `tracestate`).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

INTERNAL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({INTERNAL_VERSION, INTERNAL_VERSION - 1})


def now_ms() -> int:
    """Wall-clock time in Unix epoch milliseconds: the unit of the deadlines and timestamps these messages carry.
    Wall clock, not a monotonic one, because the gateway that stamps a deadline and the worker that checks it are
    different machines."""
    return int(time.time() * 1000)


class _Internal(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Job(_Internal):
    """One request for one worker, as it sits in `{prefix}:v1:jobs:{task}`."""

    type: Literal["job"] = "job"
    v: int = INTERNAL_VERSION
    job_id: str
    """Stable across re-submissions: a job re-sent after a suspected loss keeps its id."""
    request_id: str
    owner: str
    """The identity (user, tenant or connection) the request belongs to; idempotency and ownership are scoped to it."""
    session: str
    task: str
    input: str
    options: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    deadline_ms: int
    """Absolute deadline, Unix epoch ms, stamped by the gateway on receipt."""
    enqueued_ms: int
    reply_to: str
    """The reply stream of the gateway that submitted the job."""
    attempt: int = 1
    """1 for the first submission; the gateway increments it when it re-submits."""
    seed: int = 0
    headers: dict[str, str] = Field(default_factory=dict)


class Reply(_Internal):
    """A worker's answer for one job, written to the job's `reply_to` stream."""

    type: Literal["reply"] = "reply"
    v: int = INTERNAL_VERSION
    job_id: str
    request_id: str
    owner: str
    session: str
    task: str
    kind: Literal["chunk", "result", "error"]
    index: int = 0
    """Chunk index within the request (chunks only)."""
    data: Any = None
    code: str | None = None
    message: str | None = None
    worker: str = ""
    headers: dict[str, str] = Field(default_factory=dict)


class Forward(_Internal):
    """A frame already numbered and logged by one gateway, handed to the gateway that now holds the session's socket."""

    type: Literal["forward"] = "forward"
    v: int = INTERNAL_VERSION
    session: str
    seq: int
    frame: str
    """The frame's JSON body without its `seq` (see codec.with_seq)."""
    owner: str = ""
    request_id: str = ""
    final: bool = False
    """The request's last frame: the receiving gateway stops tracking it (the sender counted its outcome)."""
    repeat: bool = False
    """The log script answered a repeat: `seq` is the number the frame got the first time, which the holder's socket
    may already have had (see `Session.deliver_final`)."""
