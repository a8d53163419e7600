"""Dead-lettered jobs: list them and put them back on their task's queue (`rtai dlq list|replay`).

Workers move a job that failed too often to `{prefix}:v1:dlq:{task}` (field `m` = the job as JSON, plus `deliveries`
and `worker`). Replaying XADDs the job to `{prefix}:v1:jobs:{task}` and removes it from the dead-letter stream in one
transaction. This module talks to Redis directly, so it needs redis-py, which the SDK itself does not depend on: it is
imported only when a function here runs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from redis.asyncio import Redis


class DlqError(RuntimeError):
    """redis-py missing, or a dead-letter entry that cannot be replayed."""


def dlq_key(prefix: str, task: str) -> str:
    """Same names as rtai_transport.keys (not imported: the client does not depend on the server libs)."""
    return f"{prefix}:v1:dlq:{task}"


def jobs_key(prefix: str, task: str) -> str:
    return f"{prefix}:v1:jobs:{task}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str
    job: dict[str, Any]
    deliveries: int
    worker: str
    reason: str = ""
    """Why a worker could not read it (empty for a job that failed `max_deliveries` times)."""

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - int(self.entry_id.split("-")[0]) / 1000)


def connect(url: str) -> Redis:
    try:
        from redis.asyncio import Redis
    except ImportError as e:
        raise DlqError("`rtai dlq` talks to Redis and needs redis-py: pip install redis") from e
    return Redis.from_url(url)


Entry = tuple[bytes, dict[bytes, bytes]]


async def _xrange(r: Redis, key: str, lo: str = "-", hi: str = "+", count: int | None = None) -> list[Entry]:
    return cast("list[Entry]", await r.xrange(key, min=lo, max=hi, count=count))


def _decode(entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    raw = fields.get(b"m", b"{}")
    try:
        job = json.loads(raw)
    except ValueError:
        job = {"unreadable": raw.decode(errors="replace")[:200]}
    return DeadLetter(
        entry_id=eid,
        job=job if isinstance(job, dict) else {"value": job},
        deliveries=int(fields.get(b"deliveries", b"0") or 0),
        worker=fields.get(b"worker", b"").decode(errors="replace"),
        reason=fields.get(b"reason", b"").decode(errors="replace"),
    )


async def list_entries(url: str, prefix: str, task: str, count: int = 50) -> list[DeadLetter]:
    """The oldest `count` dead-lettered jobs of a task."""
    r = connect(url)
    try:
        entries = await _xrange(r, dlq_key(prefix, task), count=count)
        return [_decode(eid, fields) for eid, fields in entries]
    finally:
        await r.aclose()


async def replay(
    url: str,
    prefix: str,
    task: str,
    ids: list[str] | None = None,
    *,
    deadline_s: float | None = 60.0,
    keep: bool = False,
) -> list[tuple[str, str]]:
    """Put dead-lettered jobs back on the task's queue: the given entry ids, or all when `ids` is None.

    `deadline_s` gives each replayed job a fresh deadline that far from now (a dead letter's own deadline has usually
    passed, and a worker answers an expired job without running it); None keeps the original. With `keep` the entry
    also stays in the dead-letter stream. Returns (dead-letter id, new job entry id) pairs.
    """
    r = connect(url)
    done: list[tuple[str, str]] = []
    try:
        source = dlq_key(prefix, task)
        entries: list[Entry]
        if ids is None:
            entries = await _xrange(r, source)
        else:
            entries = []
            for i in ids:
                found = await _xrange(r, source, i, i)
                if not found:
                    raise DlqError(f"no dead letter {i} in {source}")
                entries.extend(found)
        for eid, fields in entries:
            if b"m" not in fields:
                raise DlqError(f"dead letter {eid!r} has no job (field `m`)")
            if b"reason" in fields:
                why = fields[b"reason"].decode(errors="replace")
                raise DlqError(f"dead letter {eid!r} is not a job the workers can read ({why}): it cannot be replayed")
            job = json.loads(fields[b"m"])
            if deadline_s is not None:
                job["deadline_ms"] = int((time.time() + deadline_s) * 1000)
            async with r.pipeline(transaction=True) as pipe:
                pipe.xadd(jobs_key(prefix, task), {"m": json.dumps(job, separators=(",", ":"))})
                if not keep:
                    pipe.xdel(source, eid)
                res = await pipe.execute()
            new_id = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            done.append((eid.decode() if isinstance(eid, bytes) else str(eid), new_id))
        return done
    finally:
        await r.aclose()
