"""The benchmark's profiles and run record, and the pipeline scenarios (L, T, N, R, S's two gateways, the inline
ceiling), each a function adding rows for the report. S's worker drains are in `drain.py`, B in `batching.py`.

A row is a plain dict: scenario id, what ran, the load generator's figures and the servers' CPU per request. Samples
for the latency plots are kept on the side (`Run.series`).
"""

from __future__ import annotations

import statistics
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
    "full", 3000, 50, 15.0, 10, [1000, 10000], 6.0, 5, [0.25, 0.5, 0.75], 10.0, 20000, 3000, 10.0, 64, 15.0, 2.0
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
        "mode": r.mode,
        **{k: r.latency_ms[k] for k in ("p50", "p90", "p99", "p99.9", "max")},
        "ok": r.ok,
        "errors": dict(r.errors),
        "connections": r.connections,
        "idle": r.idle_connections,  # those that connected
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
        # Per socket that connected: divided by the number asked for, failed connects made each look cheaper.
        kb = (rss[0] - before) / 1024 / r.idle_connections if rss and r.idle_connections else None
        return r, meter.per_request_us(r.ok), kb

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
        run.add("N", f"{p.n_active} active + {idle} idle sockets", idle_r, idle_cpu, plot="idle")
        kbs = [kb for *_, kb in idles if kb is not None]
        run.rows[-1] |= {
            "idle_wanted": idle,
            # The verdict's evidence that every round ran with all its idle sockets: the fewest that connected in
            # any round, and every round's errors (a holder counts failed connects and sockets the server closed).
            "idle_connected_min": min(r.idle_connections for r, *_ in idles),
            "errors_all_rounds": _summed_errors([b[0] for b in bases] + [i[0] for i in idles]),
            # The first round's growth: freed sockets' memory stays with the process and is reused by later rounds.
            "gateway_kb_per_idle_socket": round(max(kbs), 1) if kbs else None,
            "rounds": len(pairs),
            "throughput_change": statistics.median(i[0].throughput / b[0].throughput - 1 for b, i in pairs),
            "p99_change": statistics.median(i[0].latency_ms["p99"] / b[0].latency_ms["p99"] - 1 for b, i in pairs),
            "round_throughputs": [[b[0].throughput, i[0].throughput] for b, i in pairs],
        }


def _summed_errors(results: Iterable[BenchResult]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in r.errors.items():
            out[k] = out.get(k, 0) + v
    return out


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
