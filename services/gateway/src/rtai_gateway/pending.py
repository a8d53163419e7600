"""What the hub tracks for each request in flight, from its admission until its final frame."""

from __future__ import annotations

from dataclasses import dataclass

from rtai_gateway.session import Session
from rtai_protocol import Job


@dataclass(eq=False)
class Pending:
    """A request this gateway accepted and has not finished."""

    job: Job
    session: Session
    received: float
    """time.monotonic() at receipt, for the latency histogram."""
    entry_id: str = ""
    first_chunk_seen: bool = False
    resend_due: bool = False
    """Its job must be enqueued again (the Redis node changed) and the re-submission failed: the heartbeat retries."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.job.owner, self.job.request_id)
