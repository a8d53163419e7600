"""Render every Grafana dashboard panel to PNG from a live Prometheus, without a Grafana server.

    python scripts/dashboards_preview.py --prometheus http://127.0.0.1:9090 --range 30m
    python scripts/dashboards_preview.py            # no Prometheus given: start a local stack and load it first

Without `--prometheus` the script starts what the live observability test starts (redis-server, gateway, two
workers, Prometheus scraping every second), drives the same load (normal traffic, client errors, an overload, a
dead-lettered and a reclaimed job), renders, and stops everything. Output: one PNG per panel and one per dashboard
(panels laid out by their gridPos) under `--out`.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "observability"))

from obs_support import (  # noqa: E402
    DASHBOARDS,
    GRAFANA_INTERVALS,
    grafana_to_promql,
    iter_panels,
    load_dashboard,
    variable_values,
)

UNIT_LABELS = {"s": "seconds", "reqps": "requests/s", "ops": "per second", "percentunit": "ratio", "bytes": "bytes"}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", text)
    if not m:
        raise argparse.ArgumentTypeError(f"duration like 90s, 10m or 1h expected, not {text!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def legend(fmt: str, labels: dict[str, str]) -> str:
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__") + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)


def query_range(prom: str, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    r = httpx.get(
        f"{prom}/api/v1/query_range",
        params={"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:.3f}"},
        timeout=30,
    )
    body = r.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{promql}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def draw_panel(
    ax: Any, panel: dict[str, Any], variables: dict[str, str], prom: str, window: tuple[float, float, float]
) -> int:
    start, end, step = window
    drawn = 0
    for target in panel["targets"]:
        promql = grafana_to_promql(target["expr"], variables)
        for series in query_range(prom, promql, start, end, step):
            points = [(float(t) - end, float(v)) for t, v in series["values"] if not math.isnan(float(v))]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, label=legend(target.get("legendFormat", ""), series["metric"]), linewidth=1.2)
            drawn += 1
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    ax.set_title(panel["title"], fontsize=8, loc="left")
    ax.set_xlabel("seconds before now", fontsize=6)
    ax.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=6)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=5, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    return drawn


def render(prom: str, out: Path, range_s: float, rate_interval: str) -> list[Path]:
    GRAFANA_INTERVALS["__rate_interval"] = rate_interval
    end = time.time()
    step = max(range_s / 240, 1.0)
    window = (end - range_s, end, step)
    written: list[Path] = []
    for path in DASHBOARDS:
        dash = load_dashboard(path)
        variables = variable_values(dash)
        panels = [p for p in iter_panels(dash) if p["type"] != "row"]
        folder = out / dash["uid"]
        folder.mkdir(parents=True, exist_ok=True)
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
        board = plt.figure(figsize=(24 * 0.75, rows * 0.42))
        board.suptitle(dash["title"], fontsize=12)
        for i, panel in enumerate(panels, 1):
            fig, ax = plt.subplots(figsize=(8, 3.6))
            n = draw_panel(ax, panel, variables, prom, window)
            fig.tight_layout()
            slug = re.sub(r"[^a-z0-9]+", "-", panel["title"].lower()).strip("-")[:60]
            target = folder / f"{i:02d}-{slug}.png"
            fig.savefig(target, dpi=110)
            plt.close(fig)
            written.append(target)
            print(f"{target.relative_to(out)}: {n} series")
            g = panel["gridPos"]
            ax = board.add_axes(
                (g["x"] / 24 + 0.01, 1 - (g["y"] + g["h"]) / rows + 0.02, g["w"] / 24 - 0.03, g["h"] / rows - 0.05)
            )
            draw_panel(ax, panel, variables, prom, window)
        target = out / f"{dash['uid']}.png"
        board.savefig(target, dpi=90)
        plt.close(board)
        written.append(target)
        print(f"{target.relative_to(out)}: dashboard")
    return written


def render_from_local_stack(out: Path, range_s: float) -> None:
    from obs_load import drive_load
    from obs_stack import running_stack

    with (
        tempfile.TemporaryDirectory(prefix="rtai-preview-") as tmp,
        running_stack(Path(tmp), admission__max_backlog="5") as stack,
    ):
        started = time.time()
        print(f"local stack up, Prometheus at {stack.prometheus_url}; driving load...")
        drive_load(stack)
        time.sleep(3)
        render(stack.prometheus_url, out, min(range_s, time.time() - started + 5), "10s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--prometheus", help="base URL of a Prometheus that scrapes rtai (default: start a local stack)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "build" / "dashboards-preview", help="output folder")
    parser.add_argument("--range", dest="range_s", type=parse_duration, default=parse_duration("1h"), help="time range")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes (with --prometheus)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.prometheus:
        render(args.prometheus.rstrip("/"), args.out, args.range_s, args.rate_interval)
    else:
        render_from_local_stack(args.out, args.range_s)
    print(f"PNG files in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
