"""The benchmark suite's smoke run: every scenario for a second or two, nothing judged, the report written.

Keeps `make bench` working without making `make test` a benchmark: it checks that each scenario produced figures
from real requests, not that the figures are good (the cores are shared; see docs/performance.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_suite_writes_a_report(tmp_path: Path) -> None:
    # Every scenario, B (embed on MiniLM) included: `make test` installs the models.
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--profile", "smoke", "--only", "L,T,N,R,S,B", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=290,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report,) = tmp_path.glob("*.json")
    data = json.loads(report.read_text())
    rows = data["rows"]
    assert {r["scenario"] for r in rows} == {"C", "L", "T", "R", "N", "S", "B"}
    drains = {(r["task"], r["workers"]) for r in rows if r["scenario"] == "S" and "task" in r}
    assert drains == {(t, n) for t in ("sentiment", "embed") for n in (1, 2)}, drains
    # B: each backend at batch 32 and 1, through the pipeline and alone (its ceiling), and judged against it.
    batched = {(r["backend"], r["batch"], bool(r.get("alone"))) for r in rows if r["scenario"] == "B"}
    want = {(b, n, alone) for b in ("int8 ONNX", "torch fp32") for n in (32, 1) for alone in (False, True)}
    assert batched == want, (batched, data["notes"])
    assert all(r["x_ceiling"] for r in rows if r["scenario"] == "B" and not r.get("alone")), rows
    for row in rows:
        assert row["ok"] > 0, row
        assert row["req_s"] > 0, row
    # The idle sockets the N row is named after all connected, in every round.
    (idle_row,) = [r for r in rows if r["scenario"] == "N" and r.get("idle_wanted")]
    assert idle_row["idle"] == idle_row["idle_connected_min"] == idle_row["idle_wanted"], idle_row
    assert not any(k.startswith(("connect_failed", "idle_closed")) for k in idle_row["errors_all_rounds"]), idle_row
    # A ratio to the ceiling only where a ceiling of the same shape ran: T's, not N's, R's or the drains'.
    assert all(r["x_ceiling"] for r in rows if r["scenario"] in ("C", "L", "T")), rows
    assert not any(r["x_ceiling"] for r in rows if r["scenario"] in ("N", "R") or "task" in r), rows
    assert (tmp_path / report.name.replace(".json", ".md")).read_text().startswith("# rtai benchmark")
    assert list(tmp_path.glob("*.png")), "no latency plot written"
