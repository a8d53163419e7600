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


@dataclass(frozen=True, slots=True)
class Replayed:
    """What `replay` did."""

    requeued: list[tuple[str, str]]
    """(dead-letter id, new job entry id) for each job put back on the queue, in dead-letter order."""
    skipped: list[tuple[str, str]]
    """(dead-letter id, why) for each entry that cannot be replayed as it is; it stays in the dead letters."""


def _job_of(fields: dict[bytes, bytes]) -> dict[str, Any] | str:
    """The job a dead letter holds, or why it cannot go back on the queue as it is."""
    if b"reason" in fields:  # set by a worker that could not read the entry: replaying it would only fail again
        why = fields[b"reason"].decode(errors="replace")
        return f"not a job the workers can read ({why})"
    if b"m" not in fields:
        return "no job (field `m`)"
    try:
        job = json.loads(fields[b"m"])
    except ValueError:
        return "its job is not JSON"
    return job if isinstance(job, dict) else "its job is not a JSON object"


def _str(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def _chosen(r: Redis, source: str, ids: list[str] | None) -> list[Entry]:
    if ids is None:
        return await _xrange(r, source)
    entries: list[Entry] = []
    for i in dict.fromkeys(ids):  # an id named twice must not queue its job twice
        found = await _xrange(r, source, i, i)
        if not found:
            raise DlqError(f"no dead letter {i} in {source}")
        entries.extend(found)
    return entries


async def replay(
    url: str,
    prefix: str,
    task: str,
    ids: list[str] | None = None,
    *,
    deadline_s: float | None = 60.0,
    keep: bool = False,
) -> Replayed:
    """Put dead-lettered jobs back on the task's queue: the given entry ids, or all when `ids` is None.

    Every entry is checked before anything is written. With `ids` None, entries that cannot be replayed (see
    `DeadLetter.reason`) are skipped and reported, and the others replayed: one unreadable entry must not block the
    rest, now or on every later run. Named `ids` are all-or-nothing: if any cannot be replayed, DlqError names each
    one and nothing is written.

    `deadline_s` gives each replayed job a fresh deadline that far from now (a dead letter's own deadline has usually
    passed, and a worker answers an expired job without running it); None keeps the original. With `keep` the entry
    also stays in the dead-letter stream.
    """
    r = connect(url)
    try:
        source = dlq_key(prefix, task)
        jobs: list[tuple[str, dict[str, Any]]] = []
        skipped: list[tuple[str, str]] = []
        for eid, fields in await _chosen(r, source, ids):
            job = _job_of(fields)
            if isinstance(job, str):
                skipped.append((_str(eid), job))
            else:
                jobs.append((_str(eid), job))
        if ids is not None and skipped:
            named = "; ".join(f"{eid}: {why}" for eid, why in skipped)
            raise DlqError(f"cannot be replayed, so nothing was: {named}")
        return Replayed(await _requeue(r, prefix, task, jobs, deadline_s=deadline_s, keep=keep), skipped)
    finally:
        await r.aclose()


async def _requeue(
    r: Redis, prefix: str, task: str, jobs: list[tuple[str, dict[str, Any]]], *, deadline_s: float | None, keep: bool
) -> list[tuple[str, str]]:
    """XADD each job and XDEL its dead letter, one transaction per job so neither happens without the other."""
    source = dlq_key(prefix, task)
    done: list[tuple[str, str]] = []
    for eid, job in jobs:
        if deadline_s is not None:
            job["deadline_ms"] = int((time.time() + deadline_s) * 1000)
        try:
            async with r.pipeline(transaction=True) as pipe:
                pipe.xadd(jobs_key(prefix, task), {"m": json.dumps(job, separators=(",", ":"))})
                if not keep:
                    pipe.xdel(source, eid)
                res = await pipe.execute()
        except Exception as e:  # say what did happen: those jobs are on the queue and out of the dead letters
            requeued = ", ".join(old for old, _ in done) or "none"
            raise DlqError(f"replay stopped at {eid} ({type(e).__name__}: {e}); already re-queued: {requeued}") from e
        done.append((eid, _str(res[0])))
    return done
