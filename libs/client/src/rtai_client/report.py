"""Load-test results: the result object `run_bench` returns, exact percentiles, HDR-style plots, JSON and tables.

Latencies are kept as raw samples (a few MB for a long run), so percentiles are exact, not bucketed. The plot puts
the percentile on a log scale of 1/(1-p) the way HdrHistogram's plotter does: the tail gets as much room as the median.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


def percentile(sorted_samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples (0 when there are none)."""
    if not sorted_samples:
        return 0.0
    return float(sorted_samples[nearest_rank(len(sorted_samples), p) - 1])


def nearest_rank(n: int, p: float) -> int:
    """The smallest rank r (1..n) with r / n >= p / 100, in integers. `p` is taken at the decimal value it was written
    as: in floats, 99.9 / 100 * 1000 is 999.0000000000001, and p99.9 came out one rank too high (the maximum of 1,000
    samples) whenever the count was a multiple of 1,000."""
    num, den = Fraction(repr(float(p))).as_integer_ratio()
    rank = -(-num * n // (den * 100))
    return min(max(rank, 1), n)


def latency_summary(samples_ms: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean of latency samples in milliseconds, rounded to microseconds."""
    s = sorted(samples_ms)
    out = {name: round(percentile(s, p), 3) for name, p in PERCENTILES}
    out["max"] = round(s[-1], 3) if s else 0.0
    out["mean"] = round(sum(s) / len(s), 3) if s else 0.0
    return out


def hdr_points(samples_ms: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(percentile, latency ms) pairs spaced evenly on the 1/(1-p) log axis, up to the largest sample."""
    s = sorted(samples_ms)
    if not s:
        return []
    top = math.log10(max(len(s), 10))  # the resolution the sample count supports
    out: list[tuple[float, float]] = []
    for i in range(points + 1):
        p = 100.0 * (1.0 - 10 ** (-top * i / points))
        out.append((round(p, 5), round(percentile(s, p), 4)))
    out.append((100.0, round(s[-1], 4)))
    return out


@dataclass
class BenchResult:
    """What one load run measured. `samples_ms` (one latency per measured request) is left out of `to_dict()`."""

    label: str
    urls: list[str]
    mode: str
    """`closed` (each connection waits for its answer before the next request) or `open` (fixed rate)."""
    connections: int
    """Active connections that connected (those that did not are `connect_failed` errors)."""
    idle_connections: int
    """Idle sockets that connected and were welcomed, not the number asked for: a verdict on what idle sockets cost
    must know how many there were (those that failed are `connect_failed` errors, and those the server closed before
    the run ended are `idle_closed_<code>`)."""
    processes: int
    rate: float | None
    tasks: dict[str, float]
    duration_s: float
    """Length of the measured window (warm-up excluded)."""
    sent: int
    ok: int
    errors: dict[str, int]
    """Final error frames by code, plus client-side failures: `timeout`, `connect_failed`, `closed_<code>`,
    `idle_closed_<code>`, `not_sent` (open loop: the schedule ran ahead of what the connections could carry)."""
    throughput: float
    """Successful requests per second in the measured window."""
    latency_ms: dict[str, float]
    loadgen_cpu_s: float
    """CPU time (user+system) the load generator's processes spent in the measured run."""
    loadgen_cpu_cores: float
    """loadgen_cpu_s / wall time: how many cores the generator itself used."""
    loop: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Numbers the caller adds (server CPU per request, memory, ...)."""
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def loadgen_cpu_us_per_request(self) -> float:
        return round(self.loadgen_cpu_s / self.ok * 1e6, 1) if self.ok else 0.0

    def to_dict(self, *, hdr: bool = True) -> dict[str, Any]:
        d = asdict(self)
        d.pop("samples_ms")
        d["error_count"] = self.error_count
        d["loadgen_cpu_us_per_request"] = self.loadgen_cpu_us_per_request
        if hdr:
            d["hdr"] = hdr_points(self.samples_ms, points=60)
        return d

    def summary_line(self) -> str:
        lat = self.latency_ms
        errs = ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return (
            f"{self.label or self.mode}: {self.throughput:,.0f} req/s, p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f}, "
            f"p99 {lat['p99']:.2f}, p99.9 {lat['p99.9']:.2f}, max {lat['max']:.2f} ms; ok {self.ok}, errors {errs}; "
            f"load generator {self.loadgen_cpu_cores:.2f} cores"
        )


def write_json(path: Path, payload: Any) -> None:
    """Write results (BenchResult objects anywhere inside dicts/lists are converted) as indented JSON."""

    def default(o: Any) -> Any:
        if isinstance(o, BenchResult):
            return o.to_dict()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=default) + "\n", encoding="utf-8")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured table; columns default to the keys of the first row."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The same table aligned for a terminal."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*cols), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in cells)])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def plot_hdr(series: Mapping[str, Sequence[float]], path: Path, title: str = "Latency by percentile") -> Path:
    """Plot latency (ms) against percentile on HdrHistogram's log(1/(1-p)) axis, one line per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ticks = [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
    top = 0.0
    for name, samples in series.items():
        pts = [(p, v) for p, v in hdr_points(samples) if p < 100.0]
        if not pts:
            continue
        xs = [1.0 / (1.0 - p / 100.0) for p, _ in pts]
        top = max(top, xs[-1])
        ax.plot(xs, [v for _, v in pts], label=name, linewidth=1.4)
    ax.set_xscale("log")
    shown = [t for t in ticks if 1.0 / (1.0 - t / 100.0) <= max(top, 10.0) * 1.01]
    ax.xaxis.set_major_locator(FixedLocator([1.0 / (1.0 - t / 100.0) for t in shown]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}%" for t in shown])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
