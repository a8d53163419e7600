"""rtai's benchmark suite: starts everything on loopback, runs the scenarios, writes a report, prints a table.

    python bench/run.py                     # full suite (make bench): bench/results/<date>.md, .json, -*.png
    python bench/run.py --profile smoke     # seconds per scenario, no targets judged (make bench-smoke, make test)
    python bench/run.py --only L,T          # some scenarios (C, the inline ceiling, runs with L and T)

Scenarios: L latency (1 connection), T throughput (closed loop), N idle sockets, R open loop at fixed rates,
S scale-out (1 vs 2 workers draining a pre-filled stream, with VADER and with MiniLM; 1 vs 2 gateways), B embed
batching, and C the ceiling: the same VADER model called inline in a FastAPI WebSocket handler, measured in the same
run. Every figure is also given as a ratio to the ceiling, with the CPU time per request of the gateway, worker and
Redis processes.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batching
import drain
import scenarios as sc

from rtai_client.report import markdown_table, plot_hdr, text_table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["scenario", "what", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "x ceiling", "CPU us/req"]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def raise_nofile() -> None:
    """Raise the soft limit on open files to the hard one before any server starts: the services inherit it, and at
    a default soft limit of 1,024 the gateway could not accept N's 10,000 idle sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def ceiling_for(run: sc.Run, row: dict[str, Any]) -> float | None:
    """The row's throughput over the ceiling's measured in the same shape (mode, rate, connections, no idle sockets),
    or None when no ceiling of that shape was measured: N's 10 connections, R's fixed rates and S's drains (no
    gateway at all) have none, and dividing them by the 50-connection closed loop's compared unlike things."""
    if row["scenario"] == "B":
        if row.get("alone"):
            return None  # the model alone is B's ceiling
        alone = [r for r in run.rows if r.get("alone") and (r["backend"], r["batch"]) == (row["backend"], row["batch"])]
        return round(float(row["req_s"]) / alone[0]["req_s"], 3) if alone and alone[0]["req_s"] else None
    if not row.get("req_s") or row.get("idle") or row.get("idle_wanted") or "connections" not in row:
        return None
    for c in run.ceiling.values():
        if (c.mode, c.rate, c.connections) == (row.get("mode"), row.get("rate"), row["connections"]) and c.throughput:
            return round(float(row["req_s"]) / c.throughput, 3)
    return None


def display(run: sc.Run) -> list[dict[str, Any]]:
    out = []
    for row in run.rows:
        cpu = row.get("cpu_us_per_req") or {}
        errors = row.get("errors") or {}
        out.append(
            {
                "scenario": row["scenario"],
                "what": row["what"],
                "req/s": row.get("req_s", ""),
                "p50 ms": row.get("p50", ""),
                "p99 ms": row.get("p99", ""),
                "p99.9 ms": row.get("p99.9", ""),
                "max ms": row.get("max", ""),
                "errors": ", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "0",
                "x ceiling": "-" if row.get("x_ceiling") is None else row["x_ceiling"],
                "CPU us/req": cpu.get("total", ""),
            }
        )
    return out


def faults(errors: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Errors of several runs, summed by kind (zero counts left out)."""
    out: dict[str, int] = {}
    for e in errors:
        for k, v in e.items():
            if v:
                out[k] = out.get(k, 0) + v
    return out


def verdict(ok: bool | None, errors: Mapping[str, int], problems: Iterable[str] = ()) -> str:
    """`met` of a target. A run with errors or timeouts meets none: its figures count successes only (a closed loop's
    lost request also stops its connection), so a failing run could look faster than a sound one."""
    if ok is None:
        return "n/a"
    why = [*problems]
    if errors:
        why.append("errors: " + ", ".join(f"{k} {v:,}" for k, v in sorted(errors.items())))
    if why:
        return f"no ({'; '.join(why)})"
    return "yes" if ok else "no"


def targets(run: sc.Run) -> list[dict[str, Any]]:
    """Each figure of issue 9 against its target (judged only in the full profile)."""
    rows = {(r["scenario"], r["what"]): r for r in run.rows}

    def by(scenario: str) -> list[dict[str, Any]]:
        return [r for (k, _), r in rows.items() if k == scenario]

    out: list[dict[str, Any]] = []

    def add(
        name: str,
        figure: str,
        target: str,
        ok: bool | None,
        errors: Iterable[Mapping[str, int]],
        problems: Iterable[str] = (),
    ) -> None:
        out.append({"target": name, "measured": figure, "wanted": target, "met": verdict(ok, faults(errors), problems)})

    t = by("T")
    if t:
        add(
            "T throughput",
            f"{t[0]['req_s']:,.0f} req/s, p99 {t[0]['p99']} ms",
            ">= 5,000 req/s, p99 < 20 ms",
            t[0]["req_s"] >= 5000 and t[0]["p99"] < 20,
            [t[0]["errors"]],
        )
    l_row, cl = by("L"), run.ceiling.get("L")
    if l_row and cl:
        gap = round(l_row[0]["p50"] - cl.latency_ms["p50"], 3)
        add(
            "L latency",
            f"p50 {l_row[0]['p50']} ms vs ceiling {cl.latency_ms['p50']} ms (+{gap} ms)",
            "p50 within 0.4 ms of the ceiling",
            gap <= 0.4,
            [l_row[0]["errors"], cl.errors],
        )
    for row in by("N"):
        _idle_target(row, add)
    s = by("S")
    for task in dict.fromkeys(r["task"] for r in s if "task" in r):
        drains = {r["workers"]: r for r in s if r.get("task") == task}
        if {1, 2} <= drains.keys() and drains[1]["req_s"]:
            ratio = drains[2]["req_s"] / drains[1]["req_s"]
            add(
                f"S workers, {task}",
                f"2 workers = {ratio:.2f}x one worker ({drains[2]['cores']})",
                ">= 1.8x when cores are free",
                ratio >= 1.8,
                [drains[1]["errors"], drains[2]["errors"]],
            )
    gws = [r for r in s if "gateway" in r["what"]]
    if len(gws) == 2 and gws[0]["req_s"]:
        add("S gateways", f"2 gateways = {gws[1]['req_s'] / gws[0]['req_s']:.2f}x one", "(no target)", None, [])
    for name, figure, ok, judged in batching_ratios(by("B")):
        add(name, figure, ">= 3x", ok, [r["errors"] for r in judged])
    return out


def _idle_target(row: dict[str, Any], add: Any) -> None:
    """N's verdict for the row with idle sockets (its paired base row carries no verdict of its own)."""
    wanted = row.get("idle_wanted")
    if not wanted or "throughput_change" not in row:
        return
    dt, dp, kb = row["throughput_change"], row["p99_change"], row.get("gateway_kb_per_idle_socket")
    connected = row.get("idle_connected_min", 0)
    problems = [] if connected >= wanted else [f"only {connected:,} of {wanted:,} idle sockets connected"]
    add(
        f"N {wanted} idle",
        f"throughput {dt:+.1%}, p99 {dp:+.1%} (medians of {row['rounds']} paired rounds), {kb} KB/socket",
        # The issue sets the bound for 1,000 idle sockets; the 10,000 variant is held to the same one.
        "< 10% worse, <= 50 KB per idle socket" + ("" if wanted == 1000 else " (1,000's bound)"),
        # One-sided: the target bounds what idle sockets cost the active ones; a run that came out faster with
        # them (seen here, +10-16%) is shown with its sign, not judged a failure.
        dt > -0.1 and dp < 0.1 and kb is not None and kb <= 50,
        # Every round's errors, not only the median run's: an idle socket that failed or was closed in any round
        # means that round measured fewer idle sockets than it says.
        [row.get("errors_all_rounds", row["errors"])],
        problems,
    )


def batching_ratios(b: list[dict[str, Any]]) -> list[tuple[str, str, bool, list[dict[str, Any]]]]:
    """B per backend: batch 32 over batch 1 through the pipeline (judged), and the same for the model alone; each with
    the pipeline rows it was judged on."""
    out = []
    big, one = batching.B_SIZES
    for backend in dict.fromkeys(r["backend"] for r in b):
        piped = {r["batch"]: r for r in b if r["backend"] == backend and not r.get("alone")}
        alone = {r["batch"]: r for r in b if r["backend"] == backend and r.get("alone")}
        if {big, one} <= piped.keys() and piped[one]["req_s"]:
            ratio = piped[big]["req_s"] / piped[one]["req_s"]
            figure = f"batching = {ratio:.2f}x batch size {one}"
            if {big, one} <= alone.keys() and alone[one]["req_s"]:
                figure += f" (the model alone: {alone[big]['req_s'] / alone[one]['req_s']:.2f}x)"
            out.append((f"B batching, {backend}", figure, ratio >= 3, [piped[big], piped[one]]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=["full", "smoke"], default="full")
    parser.add_argument("--only", default="L,T,N,R,S,B", help="comma-separated scenarios")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results; smoke: a temp dir)"
    )
    parser.add_argument("--name", default=None, help="report file name stem (default: today's date)")
    args = parser.parse_args()
    profile = sc.FULL if args.profile == "full" else sc.SMOKE
    which = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    out = args.out or (RESULTS if profile is sc.FULL else Path(tempfile.mkdtemp(prefix="rtai-bench-smoke-")))
    stem = args.name or time.strftime("%Y-%m-%d")
    workdir = Path(tempfile.mkdtemp(prefix="rtai-bench-"))
    run = sc.Run(profile=profile, workdir=workdir)
    raise_nofile()  # before any server starts: they inherit it
    info = machine()
    started = time.time()
    try:
        if which & {"L", "T", "N", "R", "S"}:
            sc.pipeline_scenarios(run, which)
        if "S" in which:
            drain.drain_scenario(run)
        if "B" in which:
            batching.batching_scenario(run)
    finally:
        logs = out / f"{stem}-logs"
        if profile is sc.SMOKE:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(logs, ignore_errors=True)
            shutil.copytree(workdir, logs, ignore=shutil.ignore_patterns("*.rdb"))
            shutil.rmtree(workdir, ignore_errors=True)
    for row in run.rows:
        row["x_ceiling"] = ceiling_for(run, row)
    judged = targets(run) if profile is sc.FULL else []
    plots = {}
    for name, series in run.series.items():
        plots[name] = plot_hdr(series, out / f"{stem}-{name}.png", title=f"rtai latency by percentile: {name}").name
    table = display(run)
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "profile": profile.name,
        "machine": info,
        "seconds": round(time.time() - started, 1),
        "rows": run.rows,
        "targets": judged,
        "notes": run.notes,
        "plots": plots,
    }
    write_json(out / f"{stem}.json", payload)
    (out / f"{stem}.md").write_text(report_md(payload, table, judged), encoding="utf-8")
    print(text_table(table, COLUMNS))
    if judged:
        print()
        print(text_table(judged))
    for note in run.notes:
        print(f"note: {note}")
    print(f"\nreport: {out / (stem + '.md')}")
    return 0


def report_md(payload: dict[str, Any], table: list[dict[str, Any]], judged: list[dict[str, Any]]) -> str:
    m = payload["machine"]
    lines = [
        f"# rtai benchmark, {payload['date']} ({payload['profile']} profile)",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs visible, Python {m['python']}, {m['os']}; load average at start "
        f"{m['load_average_at_start']} (the cores are shared: compare figures within this run, not across runs).",
        "Everything on loopback: redis-server, one gateway, one VADER worker (production defaults: JSON logs at info, "
        "metrics, session log and idempotency on; the per-connection rate limit raised for the load generator). "
        "`x ceiling` is throughput divided by the inline ceiling's measured in the same shape (closed loop, same "
        "connection count, no idle sockets; `-` where no ceiling of that shape was measured), for B by the model's "
        "own throughput at the same batch size, called alone in a process of its own. CPU us/req sums the "
        "gateway, worker and Redis processes over the measured window (for a run of N requests: from the end of "
        "its warm-up requests to its last answer). A target is not met by a run with errors or timeouts.",
        "",
        markdown_table(table, COLUMNS),
    ]
    if judged:
        lines += ["## Targets (issue 9)", "", markdown_table(judged)]
    if payload["notes"]:
        lines += ["## Notes", "", *(f"- {n}" for n in payload["notes"]), ""]
    if payload["plots"]:
        lines += ["## Latency plots", "", *(f"![{k}]({v})" for k, v in payload["plots"].items()), ""]
    lines += ["Reproduce: `make bench` (full) or `make bench-smoke`. Raw figures: the JSON file next to this one.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
