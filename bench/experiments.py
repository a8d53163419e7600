"""Side-by-side measurements of candidate optimisations (docs/performance.md), each prototyped by monkeypatching in
bench/patched.py, against the unpatched services, interleaved in rounds on one Redis so drift hits all variants alike.

    python bench/experiments.py [--rounds 2] [--seconds 5] [--only base,uvloop,...]
    python bench/experiments.py --only base --against HEAD~1     # this working tree against an earlier commit
    python bench/experiments.py --only base --against HEAD~1 --connections 10 --idle 10000

`--against REV` adds the variant `rev:REV`: the unpatched services of that commit, run from a temporary git worktree
(its source directories first on PYTHONPATH), so a change already made can be measured against the code before it.
`--idle N` holds N idle sockets open during the throughput phase (the N scenario); `--rate R` runs that phase open-loop
at R requests/s (the R scenario) instead of closed-loop.
A variant named `env:KEY=VALUE[+KEY=VALUE...]` runs the unpatched services with those settings in their environment,
e.g. `--only base,env:RTAI_GW_SESSIONS__LOG_LANES=1` (each service ignores the other's prefix).
`--storm N` opens N more sockets (and keeps them open, silent) from 2 s into the throughput phase's measured window: a
reconnect storm, as after a gateway restart, while the load runs.
`--task embed` loads MiniLM `embed` instead of VADER `sentiment`; `--worker-env KEY=VALUE` sets a worker setting for
every variant, commits included (e.g. `--worker-env RTAI_WORKER_MAX_BATCH_SIZE=1`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scenarios as sc
import stack as st

from rtai_client.loadgen import run_bench
from rtai_client.report import BenchResult, text_table, write_json

PATCHED = str(Path(__file__).resolve().parent / "patched.py")

# name -> (gateway flags, worker flags, worker env)
VARIANTS: dict[str, tuple[list[str], list[str], dict[str, str]]] = {
    "base": ([], [], {}),
    "uvloop": (["--uvloop"], ["--uvloop"], {}),
    "no-spans": (["--no-spans"], ["--no-spans"], {}),
    "inline-predict": ([], ["--inline-predict"], {}),
    "batch-delay-0": ([], [], {"RTAI_WORKER_MAX_BATCH_DELAY_MS": "0"}),
    "no-cancel-screen": ([], ["--no-cancel-screen"], {}),
    "unlogged-finals": (["--unlogged-finals"], [], {}),
    "worker-logged-finals": (["--worker-logged-finals"], ["--worker-logged-finals"], {}),
    "gc-log": (["--gc-log"], ["--gc-log"], {}),
    "all": (
        ["--uvloop"],
        ["--uvloop", "--inline-predict"],
        {"RTAI_WORKER_MAX_BATCH_DELAY_MS": "0"},
    ),
}

STORM_AFTER_S = 2.0
"""How far into the throughput phase's measured window the storm starts."""

TASKS = {"sentiment": "sentiment=vader", "embed": "embed=minilm-embed"}
"""Load task -> the worker's task spec."""


REVISIONS: dict[str, Path] = {}
"""`rev:REV` variant -> the worktree holding that commit."""


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached git worktree of `rev`, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rtai-rev-")) / "tree"
    subprocess.run(["git", "-C", str(st.REPO), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(st.REPO), "worktree", "remove", "--force", str(path)], check=False)


def _procs(url: str, prefix: str, variant: str, task: str, worker_env: dict[str, str]) -> tuple[st.Proc, st.Proc]:
    spec = TASKS[task]
    if variant in REVISIONS:
        tree = REVISIONS[variant]
        # The workspace's members (pyproject: libs/*, services/*), that commit's source first on the path.
        path = os.pathsep.join(str(d) for d in sorted([*tree.glob("libs/*/src"), *tree.glob("services/*/src")]))
        return (
            st.gateway(url, prefix, **sc.GATEWAY_ENV, PYTHONPATH=path),
            st.worker(url, prefix, spec, **worker_env, PYTHONPATH=path),
        )
    if variant.startswith("env:"):
        env = dict(kv.split("=", 1) for kv in variant.removeprefix("env:").split("+"))
        return st.gateway(url, prefix, **{**sc.GATEWAY_ENV, **env}), st.worker(url, prefix, spec, **worker_env, **env)
    gflags, wflags, wenv = VARIANTS[variant]
    gw = st.gateway(url, prefix, **sc.GATEWAY_ENV)
    wk = st.worker(url, prefix, spec, **worker_env, **wenv)
    if variant != "base":
        gw.argv = [gw.argv[0], PATCHED, "gateway", *gflags]
        wk.argv = [wk.argv[0], PATCHED, "worker", *wflags]
    return gw, wk


def one(s: st.Stack, redis: st.Proc, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    url = f"redis://127.0.0.1:{redis.port}/0"
    worker_env = dict(kv.split("=", 1) for kv in args.worker_env)
    gw_p, wk_p = _procs(url, f"exp{uuid.uuid4().hex[:6]}", variant, args.task, worker_env)
    gw, wk = s.start(gw_p), s.start(wk_p, timeout=300)
    seconds, connections, idle, rate, task = args.seconds, args.connections, args.idle, args.rate, args.task
    try:
        ws = f"ws://127.0.0.1:{gw.port}/v1/ws"
        run_bench(ws, connections=4, duration_s=1.0, warmup_s=0.0, tasks=task)
        lat = run_bench(ws, connections=1, requests=600, warmup_requests=100, tasks=task)
        meter = st.CpuMeter([gw, wk, redis])
        thr = throughput(
            ws,
            meter,
            args.storm,
            connections=connections,
            duration_s=seconds,
            warmup_s=2.0 if idle else 1.0,
            idle_connections=idle,
            rate=rate,
            tasks=task,
        )
        cpu = meter.per_request_us(thr.ok)
        return {
            "L p50 ms": lat.latency_ms["p50"],
            "L p99 ms": lat.latency_ms["p99"],
            "T req/s": thr.throughput,
            "T p50 ms": thr.latency_ms["p50"],
            "T p99 ms": thr.latency_ms["p99"],
            "T p99.9 ms": thr.latency_ms["p99.9"],
            "T max ms": thr.latency_ms["max"],
            "gateway us/req": cpu.get("gateway", 0.0),
            "worker us/req": cpu.get("worker", 0.0),
            "redis us/req": cpu.get("redis", 0.0),
            "total us/req": cpu.get("total", 0.0),
            "errors": thr.error_count + lat.error_count,
        }
    finally:
        s.stop(wk)
        s.stop(gw)


def throughput(ws: str, meter: st.CpuMeter, storm: int, **kw: Any) -> BenchResult:
    """The throughput phase, with `storm` sockets connecting from `STORM_AFTER_S` into its measured window. The storm's
    clock starts when the window does: started before `run_bench`, it also counted the load's own start-up (spawning
    its processes, connecting its sockets, idle ones included: seconds for 10,000), and the storm could land before
    anything was measured."""
    timers: list[threading.Timer] = []

    def start() -> None:
        meter.start()
        if storm:
            seconds = float(kw["duration_s"])
            storm_kw = {"connections": 1, "duration_s": max(seconds - 4.0, 1.0), "warmup_s": 0.0}
            timer = threading.Timer(STORM_AFTER_S, run_bench, [ws], {**storm_kw, "idle_connections": storm})
            timers.append(timer)
            timer.start()

    try:
        return run_bench(ws, on_measure_start=start, on_measure_end=meter.stop, **kw)
    finally:
        for t in timers:
            t.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--idle", type=int, default=0, help="idle sockets held open during the throughput phase")
    parser.add_argument("--rate", type=float, default=None, help="open loop at this many requests/s")
    parser.add_argument("--storm", type=int, default=0, help="sockets that connect during the throughput phase")
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--against", action="append", default=[], metavar="REV", help="compare with a commit")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--task", choices=sorted(TASKS), default="sentiment", help="the model the load runs on")
    parser.add_argument("--worker-env", action="append", default=[], metavar="KEY=VALUE", help="for every variant")
    args = parser.parse_args()
    variants = [v.strip() for v in args.only.split(",") if v.strip()] + [f"rev:{r}" for r in args.against]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    if args.idle or args.storm:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the gateway
    workdir = Path(tempfile.mkdtemp(prefix="rtai-exp-"))
    print(f"services' logs: {workdir}", flush=True)
    with contextlib.ExitStack() as trees, st.Stack(workdir) as s:
        for rev in args.against:
            REVISIONS[f"rev:{rev}"] = trees.enter_context(worktree(rev))
        redis = s.start(st.redis())
        for i in range(args.rounds):
            # Alternate the order from round to round: a drift in the machine's speed hits every variant alike.
            for v in variants if i % 2 == 0 else reversed(variants):
                runs[v].append(one(s, redis, v, args))
                print(v, runs[v][-1], flush=True)
    base = runs.get("base")
    rows = []
    for v, rs in runs.items():
        row: dict[str, Any] = {"variant": v}
        for k in rs[0]:
            row[k] = round(statistics.median(r[k] for r in rs), 3)
        if base:
            b_thr = statistics.median(r["T req/s"] for r in base)
            row["T vs base"] = round(row["T req/s"] / b_thr, 3) if b_thr else None
        rows.append(row)
    print(text_table(rows))
    if args.out:
        write_json(
            args.out,
            {
                "rounds": args.rounds,
                "seconds": args.seconds,
                "rate": args.rate,
                "storm": args.storm,
                "task": args.task,
                "worker_env": args.worker_env,
                "runs": runs,
                "medians": rows,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
