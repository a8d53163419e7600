"""Every Redis key and stream name, in one place, under a configurable prefix.

Session keys put the session id in a hash tag (`{...}`) so a session's keys share one Redis Cluster slot, which the
Lua scripts that touch them together require.
"""

from __future__ import annotations

from dataclasses import dataclass

WORKER_GROUP = "workers"
"""The consumer group every worker of a task reads through."""


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def root(self) -> str:
        return f"{self.prefix}:v1"

    def jobs(self, task: str) -> str:
        """Stream of jobs for one task (consumer group `workers`)."""
        return f"{self.root}:jobs:{task}"

    def dead_letters(self, task: str) -> str:
        """Stream of jobs that failed too often."""
        return f"{self.root}:dlq:{task}"

    def replies(self, gateway_id: str) -> str:
        """Stream of worker replies for one gateway process (one reader: that gateway)."""
        return f"{self.root}:replies:{gateway_id}"

    def gateway_alive(self, gateway_id: str) -> str:
        """Set with a short TTL while the gateway runs."""
        return f"{self.root}:gateway:{gateway_id}"

    @property
    def tasks(self) -> str:
        """Hash task -> JSON of the model configuration that serves it (one task name = one configuration)."""
        return f"{self.root}:tasks"

    def task_workers(self, task: str) -> str:
        """Sorted set worker id -> expiry (ms) of the workers serving a task (heartbeat)."""
        return f"{self.root}:task:{task}:workers"

    def session_seq(self, session: str) -> str:
        return f"{self.root}:session:{{{session}}}:seq"

    def session_log(self, session: str) -> str:
        """Stream of a session's numbered frames (entry id `<seq>-1`), read on resume."""
        return f"{self.root}:session:{{{session}}}:log"

    def session_meta(self, session: str) -> str:
        """Hash: `identity` the session belongs to, `gateway` that holds its socket now."""
        return f"{self.root}:session:{{{session}}}:meta"

    def session_inflight(self, session: str) -> str:
        """Hash request id -> job JSON of the session's unfinished requests (re-submitted on takeover)."""
        return f"{self.root}:session:{{{session}}}:inflight"

    def request(self, owner: str, request_id: str) -> str:
        """Hash of one request's state (`session`, `job`, `next` chunk index, `final` frame) for idempotency."""
        return f"{self.root}:req:{{{owner}}}:{request_id}"

    def cancelled(self, job_id: str) -> str:
        """Set (with TTL) when a job is cancelled; workers check it before running and between chunks."""
        return f"{self.root}:cancel:{job_id}"

    @property
    def cancel_channel(self) -> str:
        """Pub/Sub wake-up for running streams to look at their cancel keys (the key is the truth)."""
        return f"{self.root}:cancel"

    @property
    def readiness_probe(self) -> str:
        return f"{self.root}:probe"
