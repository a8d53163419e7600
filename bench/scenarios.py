"""The benchmark scenarios (L, T, N, R, S, B and the inline ceiling), each a function returning rows for the report.

A row is a plain dict: scenario id, what ran, the load generator's figures and the servers' CPU per request. Samples
for the latency plots are kept on the side (`Run.series`).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import stack as st

from rtai_client.loadgen import run_bench
from rtai_client.report import BenchResult

# A production gateway's defaults, except the per-connection frame rate limit (100/s): the load generator drives a
# few connections far harder than one user would, which is a load test, not abuse. Connection cap raised for N.
GATEWAY_ENV = {
    "RTAI_GW_LIMITS__MESSAGES_PER_S": "1000000",
    "RTAI_GW_LIMITS__MESSAGE_BURST": "1000000",
    "RTAI_GW_LIMITS__MAX_CONNECTIONS": "20000",
}


@dataclass
class Profile:
    """How big each scenario is: `full` for `make bench`, `smoke` for the test suite (seconds, no targets)."""

    name: str
    l_requests: int
    t_connections: int
    t_seconds: float
    n_active: int
    n_idle: list[int]
    n_seconds: float
    n_rounds: int
    r_fractions: list[float]
    r_seconds: float
    s_jobs: int
    s_embed_jobs: int
    s_seconds: float
    b_connections: int
    b_seconds: float
    warmup_s: float


FULL = Profile(
    "full", 3000, 50, 15.0, 10, [1000, 10000], 6.0, 3, [0.25, 0.5, 0.75], 10.0, 20000, 3000, 10.0, 64, 15.0, 2.0
)
SMOKE = Profile("smoke", 200, 20, 2.0, 4, [100], 1.5, 1, [0.5], 1.5, 2000, 200, 2.0, 16, 2.0, 0.5)


_Run = TypeVar("_Run", bound=tuple[Any, ...])
"""A measured run: its BenchResult first, then what was measured with it."""


@dataclass
class Run:
    profile: Profile
    workdir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Plot name -> {line label -> latency samples (ms)}."""
    ceiling: dict[str, BenchResult] = field(default_factory=dict)
    """Ceiling results by shape: "L" (1 connection) and "T" (the T scenario's connections)."""
    notes: list[str] = field(default_factory=list)

    def add(
        self,
        scenario: str,
        what: str,
        r: BenchResult,
        cpu: dict[str, float],
        plot: str | None = None,
        **extra: Any,
    ) -> None:
        """One row of figures; `extra` are the keys the verdict groups a scenario's rows by (B: backend, batch)."""
        row: dict[str, Any] = {"scenario": scenario, "what": what, **_figures(r), "cpu_us_per_req": cpu, **extra}
        self.rows.append(row)
        if plot is not None:
            self.series.setdefault(plot, {})[f"{scenario}: {what}"] = r.samples_ms


def _figures(r: BenchResult) -> dict[str, Any]:
    return {
        "req_s": r.throughput,
        **{k: r.latency_ms[k] for k in ("p50", "p90", "p99", "p99.9", "max")},
        "ok": r.ok,
        "errors": dict(r.errors),
        "connections": r.connections,
        "idle": r.idle_connections,
        "rate": r.rate,
        "loadgen_cores": r.loadgen_cpu_cores,
        "loadgen_processes": r.processes,
    }


def ws_url(proc: st.Proc) -> str:
    return f"ws://127.0.0.1:{proc.port}/v1/ws"


def measured(
    procs: Iterable[st.Proc], fn: Callable[..., BenchResult], **kw: Any
) -> tuple[BenchResult, dict[str, float]]:
    """Run a load with the servers' CPU counted over the measured window only."""
    meter = st.CpuMeter(procs)
    r = fn(on_measure_start=meter.start, on_measure_end=meter.stop, **kw)
    return r, meter.per_request_us(r.ok)


# ---- the pipeline scenarios, on one stack --------------------------------------------------------------------------


def pipeline_scenarios(run: Run, which: set[str]) -> None:
    with st.Stack(run.workdir) as s:
        redis = s.start(st.redis())
        url = f"redis://127.0.0.1:{redis.port}/0"
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        gw = s.start(st.gateway(url, prefix, **GATEWAY_ENV))
        wk = s.start(st.worker(url, prefix))
        servers = [gw, wk, redis]
        ceil = s.start(st.ceiling())
        _settle(gw)
        if "L" in which:
            _latency(run, ceil, servers, gw)
        if {"T", "R"} & which:
            _throughput(run, ceil, servers, gw)
        if "R" in which:
            _open_loop(run, servers, gw)
        s.stop(ceil)
        if "N" in which:
            _idle(run, servers, gw)
        if "S" in which:
            _two_gateways(run, s, url, prefix, gw, wk, redis)


def _settle(gw: st.Proc) -> None:
    """A short unmeasured load so caches, scripts and connection pools are warm before the first figure."""
    run_bench(ws_url(gw), connections=4, duration_s=1.0, warmup_s=0.0)


def _latency(run: Run, ceil: st.Proc, servers: list[st.Proc], gw: st.Proc) -> None:
    n = run.profile.l_requests
    kw: dict[str, Any] = {"connections": 1, "requests": n, "warmup_requests": max(n // 10, 20)}
    r, cpu = measured([ceil], run_bench, url=ws_url(ceil), label="ceiling L", **kw)
    run.ceiling["L"] = r
    run.add("C", "ceiling: inline VADER, 1 connection", r, cpu, plot="latency")
    r, cpu = measured(servers, run_bench, url=ws_url(gw), label="L", **kw)
    run.add("L", f"1 connection, closed loop, {n} requests", r, cpu, plot="latency")


def _throughput(run: Run, ceil: st.Proc, servers: list[st.Proc], gw: st.Proc) -> None:
    p = run.profile
    kw: dict[str, Any] = {"connections": p.t_connections, "duration_s": p.t_seconds, "warmup_s": p.warmup_s}
    r, cpu = measured([ceil], run_bench, url=ws_url(ceil), label="ceiling T", **kw)
    run.ceiling["T"] = r
    run.add("C", f"ceiling: inline VADER, {p.t_connections} connections", r, cpu, plot="throughput")
    r, cpu = measured(servers, run_bench, url=ws_url(gw), label="T", **kw)
    run.add("T", f"{p.t_connections} connections, closed loop, {p.t_seconds:g} s", r, cpu, plot="throughput")


def _open_loop(run: Run, servers: list[st.Proc], gw: st.Proc) -> None:
    p = run.profile
    t = next((row for row in run.rows if row["scenario"] == "T"), None)
    capacity = t["req_s"] if t else 1000.0
    for frac in p.r_fractions:
        rate = max(round(capacity * frac), 10)
        r, cpu = measured(
            servers,
            run_bench,
            url=ws_url(gw),
            connections=p.t_connections,
            duration_s=p.r_seconds,
            warmup_s=p.warmup_s,
            rate=rate,
            label=f"R {frac:.0%}",
        )
        run.add("R", f"open loop at {frac:.0%} of T ({rate}/s)", r, cpu, plot="open-loop")


def _idle(run: Run, servers: list[st.Proc], gw: st.Proc) -> None:
    """For each idle count, `n_rounds` pairs of runs without and with the idle sockets, the order alternating from
    round to round; each is judged by the median over rounds of its paired ratios, so that a drift of the shared
    machine's speed (which moved single runs by 15% here) is not taken for the idle sockets' cost."""
    p = run.profile
    kw: dict[str, Any] = {"connections": p.n_active, "duration_s": p.n_seconds, "warmup_s": p.warmup_s}

    def without_idle() -> tuple[BenchResult, dict[str, float]]:
        return measured(servers, run_bench, url=ws_url(gw), label="N base", **kw)

    def with_idle(idle: int) -> tuple[BenchResult, dict[str, float], float | None]:
        before = gw.rss()
        rss: list[int] = []
        meter = st.CpuMeter(servers)

        def start() -> None:
            rss.append(gw.rss())
            meter.start()

        r = run_bench(
            ws_url(gw),
            idle_connections=idle,
            label=f"N {idle}",
            on_measure_start=start,
            on_measure_end=meter.stop,
            timeout_s=30.0,
            **kw,
        )
        time.sleep(2.0)  # let the gateway close the idle sessions before the next run
        return r, meter.per_request_us(r.ok), (rss[0] - before) / 1024 / idle if rss else None

    for idle in p.n_idle:
        bases: list[tuple[BenchResult, dict[str, float]]] = []
        idles: list[tuple[BenchResult, dict[str, float], float | None]] = []
        try:
            for i in range(p.n_rounds):
                for idle_first in (False, True) if i % 2 else (True, False):
                    if idle_first:
                        idles.append(with_idle(idle))
                    else:
                        bases.append(without_idle())
        except (RuntimeError, OSError) as e:
            run.notes.append(f"N with {idle} idle sockets did not run: {e}")
            continue
        pairs = list(zip(bases, idles, strict=True))
        base_r, base_cpu = _median_run(bases)
        run.add("N", f"{p.n_active} active, no idle sockets (paired with {idle} idle)", base_r, base_cpu, plot="idle")
        idle_r, idle_cpu, _ = _median_run(idles)
        run.add("N", f"{p.n_active} active + {idle_r.idle_connections} idle sockets", idle_r, idle_cpu, plot="idle")
        kbs = [kb for *_, kb in idles if kb is not None]
        run.rows[-1] |= {
            # The first round's growth: freed sockets' memory stays with the process and is reused by later rounds.
            "gateway_kb_per_idle_socket": round(max(kbs), 1) if kbs else None,
            "rounds": len(pairs),
            "throughput_change": statistics.median(i[0].throughput / b[0].throughput - 1 for b, i in pairs),
            "p99_change": statistics.median(i[0].latency_ms["p99"] / b[0].latency_ms["p99"] - 1 for b, i in pairs),
            "round_throughputs": [[b[0].throughput, i[0].throughput] for b, i in pairs],
        }


def _median_run(runs: list[_Run]) -> _Run:
    """The run with the median throughput (the lower middle one for an even count), with what came with it."""
    ordered = sorted(runs, key=lambda t: t[0].throughput)
    return ordered[(len(ordered) - 1) // 2]


def _two_gateways(run: Run, s: st.Stack, url: str, prefix: str, gw: st.Proc, wk: st.Proc, redis: st.Proc) -> None:
    p = run.profile
    kw: dict[str, Any] = {"connections": p.t_connections, "duration_s": p.s_seconds, "warmup_s": p.warmup_s}
    r, cpu = measured([gw, wk, redis], run_bench, url=ws_url(gw), label="S 1 gateway", **kw)
    run.add("S", "1 gateway (same worker, closed loop)", r, cpu)
    gw2 = s.start(st.gateway(url, prefix, name="gateway2", **GATEWAY_ENV))
    r, cpu = measured([gw, gw2, wk, redis], run_bench, url=[ws_url(gw), ws_url(gw2)], label="S 2 gateways", **kw)
    run.add("S", "2 gateways behind the same Redis", r, cpu)
    s.stop(gw2)


# ---- S: workers draining a pre-filled stream, no gateway ------------------------------------------------------------


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
                meter = st.CpuMeter([*workers, redis])
                elapsed, left = asyncio.run(_release_and_wait(url, prefix, drain.task, meter, 120.0))
                done = drain.jobs - left  # a drain that ran out of time reports what it did, not what it was given
                rate = done / elapsed if elapsed else 0.0
                run.rows.append(
                    {
                        "scenario": "S",
                        "what": f"{n_workers} worker process{'es' if n_workers > 1 else ''} draining "
                        f"{drain.jobs} queued jobs (no gateway): {drain.label}",
                        "task": drain.task,
                        "workers": n_workers,
                        "cores": drain.cores,
                        "req_s": round(rate, 1),
                        "ok": done,
                        "errors": {"not drained in 120 s": left} if left else {},
                        "cpu_us_per_req": meter.per_request_us(done),
                    }
                )


def _job(prefix: str, task: str, i: int) -> bytes:
    from rtai_client.loadgen import DEFAULT_TEXTS
    from rtai_protocol import Job, encode
    from rtai_transport import Keys

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
    import redis.asyncio as aioredis

    from rtai_transport import WORKER_GROUP, Keys

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
    import redis.asyncio as aioredis

    from rtai_transport import WORKER_GROUP, Keys

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


# ---- B: embed with dynamic batching vs batch size 1 -----------------------------------------------------------------


BACKENDS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("int8 ONNX", "minilm-embed", {}),
    ("torch fp32", "plugged_models:minilm_embed_torch_fp32", {"PYTHONPATH": str(st.REPO / "bench")}),
)
"""B's models: (label, model spec, worker env). The shipped CPU backend, and the same weights in torch fp32, which
gain ~4x from batches where the int8 graph gains ~1.4x (`bench/plugged_models.py` says why both)."""


B_SIZES = (32, 1)
"""B's batch sizes: dynamic batching up to this many, and one at a time."""


def _model_alone(run: Run, backend: str, spec: str, env: dict[str, str]) -> bool:
    """B's ceiling: the model's own throughput at each batch size (`bench/model_alone.py`, a fresh process, run
    while nothing else is), one row per size."""
    seconds = max(run.profile.b_seconds / 3, 0.5)
    argv = [sys.executable, str(st.REPO / "bench" / "model_alone.py"), spec, "--sizes", ",".join(map(str, B_SIZES))]
    proc = subprocess.run(
        [*argv, "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=300 + 2 * seconds,
        env={**os.environ, **env},
        cwd=st.REPO,
    )
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        run.notes.append(f"B {backend} not measured: the model did not run alone ({why})")
        return False
    for size, figures in json.loads(proc.stdout).items():
        run.rows.append(
            {
                "scenario": "B",
                "what": f"embed ({backend}), the model alone, batch {size}",
                "req_s": figures["texts_per_s"],
                "ok": figures["texts"],
                "backend": backend,
                "batch": int(size),
                "alone": True,
            }
        )
    return True


def batching_scenario(run: Run) -> None:
    p = run.profile
    for backend, spec, env in BACKENDS:
        if not _model_alone(run, backend, spec, env):
            continue
        for size in B_SIZES:
            with st.Stack(run.workdir) as s:
                redis = s.start(st.redis())
                url = f"redis://127.0.0.1:{redis.port}/0"
                prefix = f"bench{uuid.uuid4().hex[:6]}"
                gw = s.start(st.gateway(url, prefix, **GATEWAY_ENV))
                try:
                    wk = s.start(
                        st.worker(url, prefix, tasks=f"embed={spec}", RTAI_WORKER_MAX_BATCH_SIZE=str(size), **env),
                        timeout=300,
                    )
                except (RuntimeError, TimeoutError) as e:
                    why = str(e).splitlines()[0]
                    run.notes.append(f"B {backend} not measured: the embed worker did not start ({why})")
                    break
                run_bench(ws_url(gw), connections=4, duration_s=1.0, warmup_s=0.0, tasks="embed")
                r, cpu = measured(
                    [gw, wk, redis],
                    run_bench,
                    url=ws_url(gw),
                    connections=p.b_connections,
                    duration_s=p.b_seconds,
                    warmup_s=p.warmup_s,
                    tasks="embed",
                    label=f"B {backend} batch {size}",
                )
                what = f"dynamic batching (max {size})" if size > 1 else "max_batch_size=1"
                run.add(
                    "B",
                    f"embed ({backend}), {p.b_connections} connections, {what}",
                    r,
                    cpu,
                    plot="batching",
                    backend=backend,
                    batch=size,
                )
