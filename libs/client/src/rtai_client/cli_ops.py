"""Operator commands of `rtai`: `dlq list|replay` (dead-lettered jobs, needs redis-py) and `bench` (load test)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()
err = Console(stderr=True)

RedisUrl = Annotated[str, typer.Option("--redis-url", envvar="RTAI_REDIS_URL", help="Redis the workers use.")]
Prefix = Annotated[str, typer.Option("--prefix", envvar="RTAI_PREFIX", help="Key prefix (REDIS__PREFIX).")]
Task = Annotated[str, typer.Option("--task", "-t", help="Task whose dead letters to use.")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


dlq_app = typer.Typer(help="Inspect and re-queue dead-lettered jobs.", no_args_is_help=True)


@dlq_app.command("list")
def dlq_list(
    task: Task,
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    prefix: Prefix = "rtai",
    count: Annotated[int, typer.Option(help="At most this many entries (oldest first).")] = 50,
    raw: Annotated[bool, typer.Option("--json", help="Print entries as JSON lines.")] = False,
) -> None:
    """List a task's dead-lettered jobs."""
    from rtai_client import dlq

    try:
        entries = asyncio.run(dlq.list_entries(redis_url, prefix, task, count))
    except (dlq.DlqError, OSError) as e:
        raise _fail(str(e)) from None
    except Exception as e:  # redis errors, without importing redis here
        raise _fail(f"{type(e).__name__}: {e}") from None
    if raw:
        for d in entries:
            fields = {"entry_id": d.entry_id, "deliveries": d.deliveries, "job": d.job, "reason": d.reason or None}
            console.print_json(json.dumps(fields))
        return
    table = Table("entry", "age", "request", "deliveries", "worker", "input", title=f"{dlq.dlq_key(prefix, task)}")
    for d in entries:
        text = str(d.job.get("input", ""))
        table.add_row(
            d.entry_id,
            f"{d.age_s:,.0f}s",
            str(d.job.get("request_id", "")),
            str(d.deliveries),
            d.worker,
            f"unreadable: {d.reason}"[:60] if d.reason else text[:40] + ("…" if len(text) > 40 else ""),
        )
    console.print(table)
    console.print(f"{len(entries)} dead-lettered job(s)")


@dlq_app.command("replay")
def dlq_replay(
    task: Task,
    ids: Annotated[list[str] | None, typer.Argument(help="Entry ids to replay (see `rtai dlq list`).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead-lettered job of the task.")] = False,
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0",
    prefix: Prefix = "rtai",
    deadline_s: Annotated[float, typer.Option(help="Fresh deadline, seconds from now (0 keeps the old one).")] = 60.0,
    keep: Annotated[bool, typer.Option(help="Also keep the entries in the dead-letter stream.")] = False,
) -> None:
    """Put dead-lettered jobs back on their task's queue (XADD to the jobs stream, XDEL from the dead letters).

    Entries no worker could read stay where they are: --all skips and lists them, and named ids that include one
    replay nothing.
    """
    from rtai_client import dlq

    if not ids and not all_:
        raise _fail("name entry ids to replay, or pass --all")
    try:
        result = asyncio.run(
            dlq.replay(redis_url, prefix, task, None if all_ else ids, deadline_s=deadline_s or None, keep=keep)
        )
    except (dlq.DlqError, OSError) as e:
        raise _fail(str(e)) from None
    except Exception as e:
        raise _fail(f"{type(e).__name__}: {e}") from None
    for old, new in result.requeued:
        console.print(f"replayed {old} -> {dlq.jobs_key(prefix, task)} {new}", highlight=False)
    for old, why in result.skipped:
        console.print(f"skipped {old}: {why}", markup=False, highlight=False)
    summary = f"{len(result.requeued)} job(s) re-queued"
    if result.skipped:  # left in the dead letters: they would fail again, and the next --all skips them too
        summary += f", {len(result.skipped)} skipped (kept in {dlq.dlq_key(prefix, task)})"
    console.print(summary, highlight=False)


def _weights(specs: list[str]) -> dict[str, float]:
    """`sentiment`, `sentiment=3` -> {task: weight}."""
    out: dict[str, float] = {}
    for spec in specs:
        for part in spec.split(","):
            name, _, w = part.strip().partition("=")
            if name:
                out[name] = float(w) if w else 1.0
    return out


def bench(
    url: Annotated[str, typer.Option("--url", envvar="RTAI_URL", help="Gateway WebSocket URL.")] = (
        "ws://127.0.0.1:8000/v1/ws"
    ),
    connections: Annotated[int, typer.Option("--connections", "-c", help="Connections sending requests.")] = 10,
    duration: Annotated[float, typer.Option("--duration", "-d", help="Measured seconds (after warm-up).")] = 10.0,
    rate: Annotated[
        float | None, typer.Option(help="Open loop: requests per second in total. Default: closed loop.")
    ] = None,
    task: Annotated[list[str], typer.Option("--task", "-t", help="Task mix: NAME or NAME=WEIGHT, repeatable.")] = [  # noqa: B006
        "sentiment"
    ],
    requests: Annotated[int | None, typer.Option(help="Run this many requests instead of --duration.")] = None,
    inflight: Annotated[int | None, typer.Option(help="Requests outstanding per connection.")] = None,
    warmup: Annotated[float, typer.Option(help="Warm-up seconds (not measured).")] = 1.0,
    deadline_ms: Annotated[int | None, typer.Option(help="deadline_ms of each request.")] = None,
    processes: Annotated[int | None, typer.Option(help="Load generator processes.")] = None,
    idle: Annotated[int, typer.Option(help="Extra connections that stay idle.")] = 0,
    label: Annotated[str, typer.Option(help="Name of this run in the report.")] = "",
    out_json: Annotated[Path | None, typer.Option("--json", help="Write the report as JSON here.")] = None,
    out_png: Annotated[Path | None, typer.Option("--png", help="Write the latency-by-percentile plot here.")] = None,
) -> None:
    """Load test: N connections, closed loop or fixed rate, a task mix; p50..max latency, throughput, errors."""
    from rtai_client import loadgen, report

    weights = _weights(task)
    total = (warmup if not requests else 0.0) + (duration if not requests else 0.0)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = loadgen.run_bench(
                url,
                connections=connections,
                duration_s=duration,
                rate=rate,
                tasks=weights,
                requests=requests,
                inflight=inflight,
                warmup_s=warmup,
                deadline_ms=deadline_ms,
                processes=processes,
                idle_connections=idle,
                label=label,
            )
        except Exception as e:
            box["error"] = e

    thread = threading.Thread(target=work, name="rtai-bench", daemon=True)
    mode = f"{rate:g} req/s open loop" if rate else "closed loop"
    with Progress(
        TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        bar = progress.add_task(f"{connections} connections, {mode}", total=total or None)
        start = time.monotonic()
        thread.start()
        while thread.is_alive():
            progress.update(bar, completed=min(time.monotonic() - start, total) if total else None)
            thread.join(0.2)
        progress.update(bar, completed=total or None)
    if "error" in box:
        raise _fail(f"{type(box['error']).__name__}: {box['error']}")
    result = box["result"]
    _print_summary(result)
    if out_json is not None:
        report.write_json(out_json, result)
        console.print(f"report: {out_json}")
    if out_png is not None:
        report.plot_hdr({result.label or result.mode: result.samples_ms}, out_png, title=f"rtai bench: {url}")
        console.print(f"plot: {out_png}")
    if result.ok == 0:
        raise typer.Exit(1)


def _print_summary(result: Any) -> None:
    lat = result.latency_ms
    table = Table("p50", "p90", "p99", "p99.9", "max", "req/s", "ok", "errors", title="latency (ms)")
    errors = ", ".join(f"{k}={v}" for k, v in sorted(result.errors.items())) or "none"
    table.add_row(
        *(f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "p99.9", "max")),
        f"{result.throughput:,.0f}",
        str(result.ok),
        errors,
    )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(dlq_app, name="dlq")
    app.command("bench")(bench)
