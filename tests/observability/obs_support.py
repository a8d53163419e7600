"""What the observability tests share: where the dashboards, rules and docs live, and how to read them.

Dashboard queries use Grafana's variables; `grafana_to_promql` turns one into plain PromQL the way Grafana would for
the "All" selection, with short fixed windows, so promtool and a live Prometheus can evaluate it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
GRAFANA_SCHEMA = SHARED / "schemas" / "grafana" / "dashboard.jsonschema.json"
DASHBOARDS = sorted(REPO.glob("deploy/helm/*/dashboards/*.json"))
RULES = REPO / "deploy" / "helm" / "gateway" / "rules" / "rtai.rules.yaml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yaml"
METRICS_DOC = REPO / "docs" / "metrics.md"
RUNBOOK = REPO / "docs" / "runbook.md"
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"

# Grafana's built-in interval variables, replaced by short fixed windows (the live test scrapes every second).
GRAFANA_INTERVALS = {"__rate_interval": "30s", "__interval": "5s", "__range": "1m", "__range_s": "60"}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    """As written in the dashboard, with Grafana variables."""
    promql: str
    """Plain PromQL: variables replaced."""

    @property
    def name(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref_id}"


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows (collapsed rows keep their panels inside)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """Template variable -> the value Grafana substitutes for "All" (or the constant's value)."""
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            values[var["name"]] = var.get("allValue") or ".*"
        elif var["type"] in ("constant", "textbox", "custom"):
            values[var["name"]] = str(var.get("query", ""))
    return values


def grafana_to_promql(expr: str, variables: dict[str, str]) -> str:
    subst = {**GRAFANA_INTERVALS, **variables}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in subst:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return subst[name]

    # ${name}, ${name:format} and $name; longest names first is implicit in the \w+ match.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def panel_queries() -> list[PanelQuery]:
    out: list[PanelQuery] = []
    for path in DASHBOARDS:
        dash = load_dashboard(path)
        variables = variable_values(dash)
        for panel in iter_panels(dash):
            for target in panel.get("targets", []):
                expr = target["expr"]
                out.append(
                    PanelQuery(dash["uid"], panel["title"], target["refId"], expr, grafana_to_promql(expr, variables))
                )
    return out


def load_rules() -> list[dict[str, Any]]:
    """Every rule of every group, each with its group name under `group`."""
    doc = yaml.safe_load(RULES.read_text())
    return [{**rule, "group": group["name"]} for group in doc["groups"] for rule in group["rules"]]


def recording_rules() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "record" in r]


def alerting_rules() -> list[dict[str, Any]]:
    return [r for r in load_rules() if "alert" in r]


_METRIC_RE = re.compile(r"(?<![\w:])(rtai_[a-z0-9_]+)")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metrics_in(expr: str) -> set[str]:
    """rtai_* metric names an expression reads (histogram series mapped back to the histogram's name)."""
    names = set()
    for name in _METRIC_RE.findall(expr):
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        names.add(name)
    return names


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    type: str
    labels: tuple[str, ...]
    exporters: tuple[str, ...]
    """"gateway", "worker" or both."""


def documented_metrics() -> dict[str, DocumentedMetric]:
    """The metric table of docs/metrics.md: | `name` | type | `label`, ... | unit | exported by | meaning |."""
    out: dict[str, DocumentedMetric] = {}
    for line in METRICS_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or not cells[0].startswith("`rtai_"):
            continue
        name = cells[0].strip("`")
        labels = tuple(sorted(re.findall(r"`(\w+)`", cells[2])))
        exporters = tuple(sorted(e for e in ("gateway", "worker") if e in cells[4]))
        out[name] = DocumentedMetric(name, cells[1], labels, exporters)
    return out


def runbook_anchors() -> set[str]:
    """GitHub-style anchors of the runbook's headings."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors
