"""The Grafana dashboards: valid against Grafana's own schema, portable, and reading only documented metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from obs_support import (
    DASHBOARDS,
    GRAFANA_SCHEMA,
    METRICS_DOC,
    documented_metrics,
    iter_panels,
    load_dashboard,
    metrics_in,
    panel_queries,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_both_charts_ship_a_dashboard() -> None:
    charts = {p.parts[-3] for p in DASHBOARDS}
    assert charts == {"gateway", "inference-worker"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_validates_against_grafana_schema(path: Path) -> None:
    schema = json.loads(GRAFANA_SCHEMA.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(load_dashboard(path)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_go_through_the_datasource_variable(path: Path) -> None:
    dash = load_dashboard(path)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in iter_panels(dash):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_has_unique_ids_and_a_stable_uid(path: Path) -> None:
    dash = load_dashboard(path)
    ids = [p["id"] for p in iter_panels(dash)]
    assert len(ids) == len(set(ids))
    assert re.fullmatch(r"[a-z0-9-]{8,40}", dash["uid"])
    assert "id" not in dash, "a Grafana-instance id must not be committed"


def test_no_query_names_a_specific_instance() -> None:
    """Charts are installed in many clusters: a dashboard may group by pod or job, never pin one by name."""
    pinned = re.compile(r"\b(instance|pod|namespace|node|job|container|service)\s*(=|=~|!=|!~)\s*\"")
    offenders = [q.name for q in panel_queries() if pinned.search(q.expr)]
    assert not offenders


def test_backlog_gauges_are_aggregated_with_max_by_task() -> None:
    """Every replica exports the same Redis numbers: summing them would count the backlog once per replica."""
    direct = re.compile(r"(?<![\w:])rtai_queue_\w+")
    wrapped = re.compile(r"max by \(task\) \(rtai_queue_\w+")
    for q in panel_queries():
        assert len(direct.findall(q.expr)) == len(wrapped.findall(q.expr)), q.name
        assert not re.search(r"sum[^()]*\([^()]*rtai_queue_", q.expr), q.name


def test_every_metric_a_panel_reads_is_documented() -> None:
    documented = documented_metrics()
    unknown = {q.name: sorted(metrics_in(q.expr) - documented.keys()) for q in panel_queries()}
    assert not {k: v for k, v in unknown.items() if v}


def test_every_dashboard_variable_query_reads_a_documented_metric() -> None:
    documented = documented_metrics()
    for path in DASHBOARDS:
        for var in load_dashboard(path)["templating"]["list"]:
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"])
                assert m, var["query"]
                assert m.group(1) in documented
                assert m.group(2) in documented[m.group(1)].labels


def test_every_panel_is_described_in_metrics_doc() -> None:
    doc = METRICS_DOC.read_text()
    missing = [
        p["title"]
        for path in DASHBOARDS
        for p in iter_panels(load_dashboard(path))
        if p["type"] != "row" and p["title"] not in doc
    ]
    assert not missing


def test_each_autoscaling_signal_has_a_panel() -> None:
    exprs: dict[str, str] = {}
    for q in panel_queries():
        exprs[q.panel] = exprs.get(q.panel, "") + q.expr
    worker = [e for t, e in exprs.items() if "backlog per worker" in t]
    gateway = [e for t, e in exprs.items() if "connections per pod" in t]
    assert len(worker) == 1
    assert "rtai_queue_workers" in worker[0]
    assert len(gateway) == 1
    assert "rtai_gateway_connections" in gateway[0]


def test_refusals_panel_lists_the_reasons_the_gateway_counts() -> None:
    """The admission-refusals panel names, after "by reason:", exactly the `reason` values the gateway exports."""
    from rtai_gateway.metrics import REFUSAL_REASONS

    panels = [
        p
        for path in DASHBOARDS
        for p in iter_panels(load_dashboard(path))
        if "rtai_gateway_admission_refusals" in json.dumps(p.get("targets", []))
    ]
    assert panels, "no panel shows rtai_gateway_admission_refusals_total"
    for panel in panels:
        _, found, listed = panel["description"].partition("by reason:")
        assert found, f"{panel['title']}: the description does not list the reasons ('by reason: ...')"
        words = {w for w in re.split(r"[\s,;.]+", re.sub(r"\([^)]*\)", " ", listed)) if w}
        assert words == set(REFUSAL_REASONS), panel["title"]
