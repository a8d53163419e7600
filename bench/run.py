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
import shutil
import sys
import tempfile
import time
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


def ceiling_for(run: sc.Run, row: dict[str, Any]) -> float | None:
    if row["scenario"] == "B":
        if row.get("alone"):
            return None  # the model alone is B's ceiling
        alone = [r for r in run.rows if r.get("alone") and (r["backend"], r["batch"]) == (row["backend"], row["batch"])]
        return round(float(row["req_s"]) / alone[0]["req_s"], 3) if alone and alone[0]["req_s"] else None
    c = run.ceiling.get("L" if row.get("connections") == 1 else "T")
    if c is None or not c.throughput or not row.get("req_s"):
        return None
    return round(float(row["req_s"]) / c.throughput, 3)


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
                "x ceiling": row.get("x_ceiling", ""),
                "CPU us/req": cpu.get("total", ""),
            }
        )
    return out


def targets(run: sc.Run) -> list[dict[str, Any]]:
    """Each figure of issue 9 against its target (judged only in the full profile)."""
    rows = {(r["scenario"], r["what"]): r for r in run.rows}

    def by(scenario: str) -> list[dict[str, Any]]:
        return [r for (k, _), r in rows.items() if k == scenario]

    out: list[dict[str, Any]] = []

    def add(name: str, figure: str, target: str, ok: bool | None) -> None:
        met = "n/a" if ok is None else "yes" if ok else "no"
        out.append({"target": name, "measured": figure, "wanted": target, "met": met})

    t = by("T")
    if t:
        add(
            "T throughput",
            f"{t[0]['req_s']:,.0f} req/s, p99 {t[0]['p99']} ms",
            ">= 5,000 req/s, p99 < 20 ms",
            t[0]["req_s"] >= 5000 and t[0]["p99"] < 20,
        )
    l_row, cl = by("L"), run.ceiling.get("L")
    if l_row and cl:
        gap = round(l_row[0]["p50"] - cl.latency_ms["p50"], 3)
        add(
            "L latency",
            f"p50 {l_row[0]['p50']} ms vs ceiling {cl.latency_ms['p50']} ms (+{gap} ms)",
            "p50 within 0.4 ms of the ceiling",
            gap <= 0.4,
        )
    for row in by("N"):
        if not row["idle"] or "throughput_change" not in row:
            continue
        dt, dp, kb = row["throughput_change"], row["p99_change"], row.get("gateway_kb_per_idle_socket")
        add(
            f"N {row['idle']} idle",
            f"throughput {dt:+.1%}, p99 {dp:+.1%} (medians of {row['rounds']} paired rounds), {kb} KB/socket",
            # The issue sets the bound for 1,000 idle sockets; the 10,000 variant is held to the same one.
            "< 10% worse, <= 50 KB per idle socket" + ("" if row["idle"] == 1000 else " (1,000's bound)"),
            # One-sided: the target bounds what idle sockets cost the active ones; a run that came out faster with
            # them (seen here, +10-16%) is shown with its sign, not judged a failure.
            dt > -0.1 and dp < 0.1 and kb is not None and kb <= 50,
        )
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
            )
    gws = [r for r in s if "gateway" in r["what"]]
    if len(gws) == 2 and gws[0]["req_s"]:
        add("S gateways", f"2 gateways = {gws[1]['req_s'] / gws[0]['req_s']:.2f}x one", "(no target)", None)
    for name, figure, ok in batching_ratios(by("B")):
        add(name, figure, ">= 3x", ok)
    return out


def batching_ratios(b: list[dict[str, Any]]) -> list[tuple[str, str, bool]]:
    """B per backend: batch 32 over batch 1 through the pipeline (judged), and the same for the model alone."""
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
            out.append((f"B batching, {backend}", figure, ratio >= 3))
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
        "`x ceiling` is throughput divided by the inline ceiling's at the same connection count (for B: by the model's "
        "own throughput at the same batch size, called alone in a process of its own); CPU us/req sums the "
        "gateway, worker and Redis processes over the measured window.",
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
