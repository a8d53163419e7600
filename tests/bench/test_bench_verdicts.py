"""The benchmark's bookkeeping without running it: verdicts, ratios to the ceiling, drain counts, the storm's timing and
the open-files limit the services inherit. No servers; the suite's modules are loaded by file, as run.py loads them."""

from __future__ import annotations

import importlib.util
import resource
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from rtai_client.report import BenchResult

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load_run() -> ModuleType:
    """bench/run.py under a name of its own; the modules it imports by plain name (bench/ on the path, as it puts it
    there) are the ones the tests below use, so that a monkeypatch reaches it."""
    if "bench_run" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_run"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_run"]


bench_run = _load_run()
sc = importlib.import_module("scenarios")
drain = importlib.import_module("drain")
experiments = importlib.import_module("experiments")
st = importlib.import_module("stack")


def _result(
    mode: str = "closed", connections: int = 1, throughput: float = 1000.0, rate: float | None = None, **kw: Any
) -> BenchResult:
    return BenchResult(
        label="",
        urls=["ws://127.0.0.1:9/v1/ws"],
        mode=mode,
        connections=connections,
        idle_connections=kw.pop("idle", 0),
        processes=1,
        rate=rate,
        tasks={"sentiment": 1.0},
        duration_s=1.0,
        sent=int(throughput),
        ok=int(throughput),
        errors=kw.pop("errors", {}),
        throughput=throughput,
        latency_ms={"p50": kw.pop("p50", 1.0), "p90": 2.0, "p99": kw.pop("p99", 3.0), "p99.9": 4.0, "max": 5.0},
        loadgen_cpu_s=0.0,
        loadgen_cpu_cores=0.0,
    )


def _run(tmp_path: Path) -> Any:
    run = sc.Run(profile=sc.FULL, workdir=tmp_path)
    run.ceiling["L"] = _result(connections=1, throughput=10_000.0, p50=0.1)
    run.ceiling["T"] = _result(connections=50, throughput=20_000.0)
    return run


# ---- x ceiling -------------------------------------------------------------------------------------------------------


def test_x_ceiling_only_where_a_ceiling_of_the_same_shape_was_measured(tmp_path: Path) -> None:
    run = _run(tmp_path)
    rows = {
        "L": _result(connections=1, throughput=2_000.0),
        "T": _result(connections=50, throughput=5_000.0),
        "N base": _result(connections=10, throughput=3_000.0),
        "N idle": _result(connections=10, throughput=3_000.0, idle=1000),
        "R": _result("open", connections=50, throughput=2_500.0, rate=2500.0),
        "T, one connection failed": _result(connections=49, throughput=5_000.0),
    }
    for what, r in rows.items():
        run.add(what[0], what, r, {})
    run.rows.append({"scenario": "S", "what": "1 worker draining", "task": "sentiment", "workers": 1, "req_s": 900.0})
    got = {row["what"]: bench_run.ceiling_for(run, row) for row in run.rows}
    assert got == {
        "L": 0.2,
        "T": 0.25,
        "N base": None,  # 10 connections: no ceiling measured at 10
        "N idle": None,
        "R": None,  # open loop at a fixed rate: the ceiling ran closed loops
        "T, one connection failed": None,
        "1 worker draining": None,  # no gateway at all
    }
    for row in run.rows:
        row["x_ceiling"] = got[row["what"]]
    shown = {r["what"]: r["x ceiling"] for r in bench_run.display(run)}
    assert shown["N base"] == "-"
    assert shown["T"] == 0.25


# ---- verdicts --------------------------------------------------------------------------------------------------------


def _met(run: Any, name: str) -> str:
    (row,) = [t for t in bench_run.targets(run) if t["target"] == name]
    return str(row["met"])


@pytest.mark.parametrize("errors", [{}, {"timeout": 3}, {"closed_1011": 1, "internal": 2}])
def test_t_is_not_met_by_a_run_with_errors_or_timeouts(tmp_path: Path, errors: dict[str, int]) -> None:
    run = _run(tmp_path)
    run.add("T", "50 connections", _result(connections=50, throughput=6_000.0, p99=10.0, errors=errors), {})
    met = _met(run, "T throughput")
    if not errors:
        assert met == "yes"
    else:
        assert met.startswith("no (errors: ")
        assert all(f"{k} {v}" in met for k, v in errors.items()), met


def test_l_is_not_met_when_the_ceiling_it_is_compared_with_had_errors(tmp_path: Path) -> None:
    run = _run(tmp_path)
    run.add("L", "1 connection", _result(p50=0.3), {})
    assert _met(run, "L latency") == "yes"
    run.ceiling["L"].errors["timeout"] = 1
    assert _met(run, "L latency") == "no (errors: timeout 1)"


def _idle_row(run: Any, **extra: Any) -> None:
    run.add("N", "10 active, no idle sockets (paired with 1000 idle)", _result(connections=10), {})
    run.add("N", "10 active + 1000 idle sockets", _result(connections=10, idle=extra.pop("idle", 1000)), {})
    run.rows[-1] |= {
        "idle_wanted": 1000,
        "idle_connected_min": 1000,
        "errors_all_rounds": {},
        "gateway_kb_per_idle_socket": 16.0,
        "rounds": 5,
        "throughput_change": -0.01,
        "p99_change": 0.02,
        **extra,
    }


def test_n_is_met_with_every_idle_socket_connected(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _idle_row(run)
    assert _met(run, "N 1000 idle") == "yes"


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"idle_connected_min": 0, "idle": 0, "errors_all_rounds": {"connect_failed": 1000}}, "only 0 of 1,000"),
        ({"idle_connected_min": 990, "errors_all_rounds": {"connect_failed": 10}}, "connect_failed 10"),
        ({"errors_all_rounds": {"idle_closed_1001": 4}}, "idle_closed_1001 4"),
        ({"errors_all_rounds": {"timeout": 1}}, "timeout 1"),
    ],
)
def test_n_is_not_met_when_idle_sockets_failed_or_were_closed(tmp_path: Path, extra: dict[str, Any], why: str) -> None:
    run = _run(tmp_path)
    _idle_row(run, **extra)
    met = _met(run, "N 1000 idle")
    assert met.startswith("no (")
    assert why in met


def _drain_row(workers: int, req_s: float, errors: dict[str, int]) -> dict[str, Any]:
    return {
        "scenario": "S",
        "what": f"{workers} workers",
        "task": "sentiment",
        "workers": workers,
        "cores": "2",
        "req_s": req_s,
        "ok": 100,
        "errors": errors,
    }


def test_s_workers_is_not_met_when_a_drain_had_failed_jobs(tmp_path: Path) -> None:
    run = _run(tmp_path)
    run.rows += [_drain_row(1, 1000.0, {}), _drain_row(2, 1900.0, {})]
    assert _met(run, "S workers, sentiment") == "yes"
    run.rows[-1]["errors"] = {"error": 7}
    assert _met(run, "S workers, sentiment") == "no (errors: error 7)"


def test_b_is_not_met_when_a_batching_run_had_errors(tmp_path: Path) -> None:
    run = _run(tmp_path)
    big, one = bench_run.batching.B_SIZES
    run.add("B", "big", _result(connections=64, throughput=400.0, errors={"timeout": 2}), {}, backend="x", batch=big)
    run.add("B", "one", _result(connections=64, throughput=100.0), {}, backend="x", batch=one)
    assert _met(run, "B batching, x") == "no (errors: timeout 2)"


# ---- S drains --------------------------------------------------------------------------------------------------------


def test_a_drain_counts_jobs_answered_with_a_result_only(tmp_path: Path) -> None:
    """Workers ack and delete a job answered with an error too: the emptied stream is not 1,000 successes."""
    d = drain.Drain("sentiment", "sentiment=vader", "VADER", 1000, "2 cores")
    meter = st.CpuMeter([])
    meter.used = {"worker": 0.9}
    row = drain.drain_row(d, 1, 1.0, 0, {"ok": 900, "error": 80, "expired": 20}, meter)
    assert (row["ok"], row["req_s"]) == (900, 900.0)
    assert row["errors"] == {"error": 80, "expired": 20}
    assert row["cpu_us_per_req"]["total"] == 1000.0  # per success
    row = drain.drain_row(d, 1, 1.0, 100, {"ok": 850}, meter)  # 100 left in the stream, 50 taken but not counted
    assert row["ok"] == 850
    assert row["errors"] == {"no outcome counted": 50, "not drained in 120 s": 100}


def test_job_outcomes_reads_what_a_worker_exports() -> None:
    from rtai_telemetry.metrics import render
    from rtai_worker.metrics import WorkerMetrics

    m = WorkerMetrics()
    m.init_task("sentiment")
    m.init_task("embed")
    m.jobs.labels("sentiment", "ok").inc(5)
    m.jobs.labels("sentiment", "error").inc(2)
    m.jobs.labels("embed", "ok").inc(9)
    text = render(m.registry)
    got = drain.job_outcomes(text.decode() if isinstance(text, bytes) else text, "sentiment")
    assert {k: v for k, v in got.items() if v} == {"ok": 5, "error": 2}


# ---- experiments' storm ----------------------------------------------------------------------------------------------


def test_the_storm_lands_inside_the_measured_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The storm's clock starts with the measured window, however long the load takes to connect before it."""
    marks: dict[str, float] = {}

    class _Meter:
        def start(self) -> None:
            marks["start"] = time.monotonic()

        def stop(self) -> None:
            marks["end"] = time.monotonic()

    def fake_run_bench(ws: str, **kw: Any) -> BenchResult:
        if kw.get("idle_connections") == 500:  # the storm
            marks["storm"] = time.monotonic()
            return _result()
        time.sleep(0.5)  # spawning processes and connecting sockets, before anything is measured
        kw["on_measure_start"]()
        time.sleep(0.5)
        kw["on_measure_end"]()
        return _result(connections=kw["connections"])

    monkeypatch.setattr(experiments, "run_bench", fake_run_bench)
    monkeypatch.setattr(experiments, "STORM_AFTER_S", 0.2)
    before = threading.active_count()
    r = experiments.throughput("ws://x", _Meter(), 500, connections=50, duration_s=5.0, warmup_s=1.0)
    assert r.connections == 50
    assert marks["start"] + 0.2 <= marks["storm"] < marks["end"]
    assert threading.active_count() == before  # the storm's thread is joined


# ---- the open-files limit --------------------------------------------------------------------------------------------


def test_run_raises_the_open_files_limit_before_any_server_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway inherits the limit: at a soft 1,024 it refused N's 10,000 idle sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    seen: list[int] = []

    def pipeline_scenarios(run: Any, which: set[str]) -> None:  # where the servers would start
        seen.append(resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    monkeypatch.setattr(bench_run.sc, "pipeline_scenarios", pipeline_scenarios)
    monkeypatch.setattr(sys, "argv", ["run.py", "--profile", "smoke", "--only", "L", "--out", str(tmp_path)])
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        assert bench_run.main() == 0
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert seen
    assert seen[0] > 1024
    assert seen[0] == (hard if hard != resource.RLIM_INFINITY else max(1024, 65536))
