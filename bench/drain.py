"""S, the workers' half: 1 vs 2 worker processes draining a pre-filled job stream, no gateway, so the cores go to the
workers. The stream is filled first with its consumer group parked at the end, then rewound at once, so every worker
starts with the whole backlog and the clock measures only draining.

Throughput counts the jobs answered with a result: a worker acks and deletes a job it answered with an error too, so
the stream's length says how many were taken, not how many succeeded. The workers' own `rtai_worker_jobs_total`, read
before and after the drain (outside the timed window), says which were which.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import stack as st
from prometheus_client.parser import text_string_to_metric_families
from scenarios import Profile, Run

from rtai_client.loadgen import DEFAULT_TEXTS
from rtai_protocol import Job, encode
from rtai_transport import WORKER_GROUP, Keys


@dataclass(frozen=True)
class Drain:
    """One model for the worker scale-out drains."""

    task: str
    worker_tasks: str
    label: str
    jobs: int
    cores: str
    """How the workers share the cores, as the verdict reports it."""
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 30.0


def drains(p: Profile) -> tuple[Drain, ...]:
    return (
        Drain("sentiment", "sentiment=vader", "sentiment (VADER)", p.s_jobs, "2 cores shared with Redis"),
        # One ONNX Runtime thread per worker: each worker gets one core, as a pod with a 1-CPU limit would, so two
        # workers on the 2 cores are not both trying to use all of them; the model is ~99% of a job's CPU (Redis ~1%).
        Drain(
            "embed",
            "embed=minilm-embed",
            "embed (MiniLM, one ONNX thread per worker)",
            p.s_embed_jobs,
            "one core per worker",
            {"RTAI_ORT_THREADS": "1"},
            start_timeout_s=300.0,
        ),
    )


def drain_scenario(run: Run) -> None:
    for drain in drains(run.profile):
        for n_workers in (1, 2):
            with st.Stack(run.workdir) as s:
                redis = s.start(st.redis())
                url = f"redis://127.0.0.1:{redis.port}/0"
                prefix = f"bench{uuid.uuid4().hex[:6]}"
                asyncio.run(_fill(url, prefix, drain.task, drain.jobs - 1))
                try:
                    workers = [
                        s.start(
                            st.worker(url, prefix, drain.worker_tasks, name=f"worker{i}", **drain.env),
                            timeout=drain.start_timeout_s,
                        )
                        for i in range(n_workers)
                    ]
                except (RuntimeError, TimeoutError) as e:
                    run.notes.append(f"S {drain.task} not measured: a worker did not start ({str(e).splitlines()[0]})")
                    break
                before = _outcomes(workers, drain.task)
                meter = st.CpuMeter([*workers, redis])
                elapsed, left = asyncio.run(_release_and_wait(url, prefix, drain.task, meter, DRAIN_LIMIT_S))
                outcomes = _outcomes_after(workers, drain.task, before, drain.jobs - left)
                run.rows.append(drain_row(drain, n_workers, elapsed, left, outcomes, meter))


DRAIN_LIMIT_S = 120.0


def drain_row(
    drain: Drain, n_workers: int, elapsed: float, left: int, outcomes: dict[str, int], meter: st.CpuMeter
) -> dict[str, Any]:
    """S's row for one drain: successes per second; failed jobs, jobs no outcome was counted for and jobs left in
    the stream are errors."""
    done = drain.jobs - left  # a drain that ran out of time reports what it did, not what it was given
    ok = min(outcomes.get("ok", 0), done)
    errors = {k: v for k, v in outcomes.items() if k != "ok" and v}
    if done > sum(outcomes.values()):
        errors["no outcome counted"] = done - sum(outcomes.values())
    if left:
        errors[f"not drained in {DRAIN_LIMIT_S:g} s"] = left
    return {
        "scenario": "S",
        "what": f"{n_workers} worker process{'es' if n_workers > 1 else ''} draining "
        f"{drain.jobs} queued jobs (no gateway): {drain.label}",
        "task": drain.task,
        "workers": n_workers,
        "cores": drain.cores,
        "req_s": round(ok / elapsed, 1) if elapsed else 0.0,
        "ok": ok,
        "errors": errors,
        "cpu_us_per_req": meter.per_request_us(ok),
    }


def job_outcomes(metrics_text: str, task: str) -> dict[str, int]:
    """One worker's `rtai_worker_jobs_total` for a task, by outcome (ok, error, expired, ...)."""
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "rtai_worker_jobs_total" and sample.labels.get("task") == task:
                outcome = sample.labels["outcome"]
                out[outcome] = out.get(outcome, 0) + int(sample.value)
    return out


def _outcomes(workers: Iterable[st.Proc], task: str) -> dict[str, int]:
    """The workers' job outcomes for a task, summed."""
    out: dict[str, int] = {}
    for w in workers:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as r:
            for k, v in job_outcomes(r.read().decode(), task).items():
                out[k] = out.get(k, 0) + v
    return out


def _outcomes_after(workers: list[st.Proc], task: str, before: dict[str, int], done: int) -> dict[str, int]:
    """The outcomes counted since `before`, once they cover the `done` jobs (a worker counts a job before it acks
    it, so this is a formality; 5 s at most)."""
    deadline = time.monotonic() + 5.0
    while True:
        now = _outcomes(workers, task)
        delta = {k: v - before.get(k, 0) for k, v in now.items()}
        if sum(delta.values()) >= done or time.monotonic() > deadline:
            return delta
        time.sleep(0.1)


def _job(prefix: str, task: str, i: int) -> bytes:
    now = int(time.time() * 1000)
    job = Job(
        job_id=uuid.uuid4().hex,
        request_id=f"r{i}",
        owner="bench",
        session="bench",
        task=task,
        input=DEFAULT_TEXTS[i % len(DEFAULT_TEXTS)],
        deadline_ms=now + 600_000,
        enqueued_ms=now,
        reply_to=Keys(prefix).replies("bench"),
    )
    return encode(job)


async def _fill(url: str, prefix: str, task: str, n: int) -> None:
    r = aioredis.Redis.from_url(url)
    stream = Keys(prefix).jobs(task)
    try:
        for start in range(0, n, 1000):
            async with r.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + 1000, n)):
                    pipe.xadd(stream, {"m": _job(prefix, task, i)})
                await pipe.execute()
        # The group starts at the end: workers see nothing until `_release_and_wait` rewinds it.
        await r.xgroup_create(stream, WORKER_GROUP, id="$")
    finally:
        await r.aclose()


async def _release_and_wait(url: str, prefix: str, task: str, meter: st.CpuMeter, limit_s: float) -> tuple[float, int]:
    """Rewind the group so every queued job is deliverable, add one more (XGROUP SETID does not wake blocked
    readers; an XADD does), and time until the workers have acked and deleted them all."""
    stream = Keys(prefix).jobs(task)
    r = aioredis.Redis.from_url(url)
    try:
        meter.start()
        started = time.perf_counter()
        await r.xgroup_setid(stream, WORKER_GROUP, id="0")
        await r.xadd(stream, {"m": _job(prefix, task, -1)})
        left = await r.xlen(stream)
        while left and time.perf_counter() - started < limit_s:
            await asyncio.sleep(0.01)
            left = await r.xlen(stream)  # workers XDEL what they acked
        elapsed = time.perf_counter() - started
        meter.stop()
        return elapsed, left
    finally:
        await r.aclose()
