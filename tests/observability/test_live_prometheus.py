"""Live proof of the dashboards and rules: a real Prometheus scrapes a running gateway and worker while a load with
errors, an overload and a reclaimed job runs; then every dashboard query and every recording rule is evaluated
through the HTTP API and must return at least one series (a panel that stays empty under that load is broken).
Windows are short (`$__rate_interval` -> 30s) and queries instant, so the whole module takes well under a minute."""

from __future__ import annotations

import math
import re
from typing import Any

import httpx
import pytest
from obs_load import LiveRun
from obs_support import PanelQuery, documented_metrics, panel_queries, recording_rules

pytestmark = pytest.mark.timeout(240)

PANEL_QUERIES = panel_queries()
RECORDING_RULES = recording_rules()
COUNTER_OR_HISTOGRAM_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")


def test_load_includes_each_kind_of_failure_the_panels_show(live: LiveRun) -> None:
    outcomes = live.report.outcomes()
    detail = f"outcomes {dict(outcomes)}, steps {live.report.steps}"
    assert outcomes["ok"] > 0, detail
    assert outcomes["unknown_task"] >= 1, detail
    assert outcomes["overloaded"] >= 1, detail
    finals = live.report.finals
    reclaimed = [rid for rid in finals if rid.startswith("reclaim-")]
    dead = [rid for rid in finals if rid.startswith("deadletter-")]
    assert [finals[rid]["type"] for rid in reclaimed] == ["result"], detail
    assert [finals[rid].get("code") for rid in dead] == ["failed"], detail
    streams = [rid for rid in live.report.finals if rid.startswith("stream-")]
    assert all(live.report.chunks[rid] > 0 for rid in streams), f"no chunk frames for {streams}"
    assert live.report.invalid_frame_answer not in ("", "no answer"), detail
    assert not live.report.duplicates, f"requests with more than one final frame: {live.report.duplicates}"


@pytest.mark.parametrize("query", PANEL_QUERIES, ids=lambda q: q.name)
def test_dashboard_panel_query_returns_series(live: LiveRun, query: PanelQuery) -> None:
    result = live.query(query.promql)
    assert result, f"panel query returned no series: {query.promql}"
    _assert_quantiles_have_data(query.promql, result)


def _assert_quantiles_have_data(promql: str, result: list[dict[str, Any]]) -> None:
    """A quantile over buckets that saw nothing is NaN: a series, but an empty line on the panel."""
    if "histogram_quantile" in promql:
        values = [float(series["value"][1]) for series in result]
        assert any(math.isfinite(v) for v in values), f"{promql} -> only NaN: {values}"


# Panels that show a failure the load provokes: under the load they must show more than a flat zero.
FAILURE_PANELS = {
    ("rtai-overview", "Error ratio by code", "A"),
    ("rtai-overview", "Admission refusals by task and reason", "A"),
    ("rtai-overview", "Slow-client closes and invalid frames", "B"),
    ("rtai-queue-workers", "Reclaimed, re-run and dead-lettered jobs", "A"),
    ("rtai-queue-workers", "Reclaimed, re-run and dead-lettered jobs", "B"),
    ("rtai-queue-workers", "Reclaimed, re-run and dead-lettered jobs", "C"),
}


# Panels that show the traffic and the backend of a live stack: under the load they must show more than a flat zero
# too (a query with a wrong label or metric name returns a series of zeros as easily as none).
TRAFFIC_PANELS = {
    ("rtai-overview", "Throughput by task and outcome", "A"),
    ("rtai-queue-workers", "Jobs by outcome", "A"),
    ("rtai-queue-workers", "Batch size (mean and p99)", "A"),
    ("rtai-queue-workers", "Workers busy", "B"),
    ("rtai-queue-workers", "Redis reachable, by service", "A"),
    ("rtai-queue-workers", "Redis clients and replication lag", "A"),
    ("rtai-queue-workers", "Redis memory", "A"),
    ("rtai-queue-workers", "Gateway autoscaling: connections per pod", "C"),
}


@pytest.mark.parametrize(
    "query",
    [q for q in PANEL_QUERIES if (q.dashboard, q.panel, q.ref_id) in FAILURE_PANELS | TRAFFIC_PANELS],
    ids=lambda q: q.name,
)
def test_failure_and_traffic_panels_show_the_load(live: LiveRun, query: PanelQuery) -> None:
    values = [float(series["value"][1]) for series in live.query(query.promql)]
    assert any(v > 0 for v in values), f"{query.promql} -> {values}"


def test_every_failure_and_traffic_panel_is_checked() -> None:
    assert {(q.dashboard, q.panel, q.ref_id) for q in PANEL_QUERIES} >= FAILURE_PANELS | TRAFFIC_PANELS


def _rule_id(rule: dict[str, Any]) -> str:
    labels = ",".join(f"{k}={v}" for k, v in rule.get("labels", {}).items())
    return f"{rule['record']}{{{labels}}}"


@pytest.mark.parametrize("rule", RECORDING_RULES, ids=_rule_id)
def test_recording_rule_returns_series(live: LiveRun, rule: dict[str, Any]) -> None:
    result = live.query(rule["expr"])
    assert result, f"rule expression returned no series: {rule['expr']}"
    _assert_quantiles_have_data(rule["expr"], result)
    matchers = [f'__name__="{rule["record"]}"', *(f'{k}="{v}"' for k, v in rule.get("labels", {}).items())]
    assert live.query("{" + ",".join(matchers) + "}"), f"Prometheus recorded no {rule['record']} series"


def _exposed_families(text: str) -> dict[str, str]:
    """`# TYPE name type` lines of a /metrics page."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def test_every_documented_metric_is_exported_with_its_type(live: LiveRun) -> None:
    stack = live.stack
    pages = {
        "gateway": _exposed_families(stack.metrics_text(stack.gateway_port)),
        "worker": _exposed_families(stack.metrics_text(stack.workers[-1][1])),
    }
    problems = []
    for metric in documented_metrics().values():
        for exporter in metric.exporters:
            # The text format names a counter family with or without `_total`, by prometheus-client version.
            page = pages[exporter]
            got = page.get(metric.name) or page.get(metric.name.removesuffix("_total"))
            if got != metric.type:
                problems.append(f"{metric.name} on {exporter}: expected {metric.type}, got {got or 'nothing'}")
    assert not problems, "\n".join(problems)


UNLABELLED_IN_THE_LIVE_RUN = {
    # Labelled counters that get a series only when the event happens, and the live run cannot cause it cheaply.
    "rtai_gateway_auth_failures_total": "the live gateway runs with auth off",
    "rtai_gateway_policy_closes_total": "no origin list or connection cap is set; idle closes take minutes",
}


def test_every_metric_series_has_exactly_the_documented_labels(live: LiveRun) -> None:
    problems = []
    for metric in documented_metrics().values():
        selector = metric.name + ("_bucket" if metric.type == "histogram" else "")
        r = httpx.get(f"{live.stack.prometheus_url}/api/v1/series", params={"match[]": selector}, timeout=10)
        if not r.json()["data"] and metric.name not in UNLABELLED_IN_THE_LIVE_RUN:
            problems.append(f"{metric.name}: no series scraped, so its labels went unchecked")
        for series in r.json()["data"]:
            labels = tuple(sorted(set(series) - {"__name__", "job", "instance", "le"}))
            if labels != metric.labels:
                problems.append(f"{metric.name}: labels {labels}, documented {metric.labels}")
                break
    assert not problems, "\n".join(problems)


def test_backlog_gauges_are_exported_by_gateway_and_worker_alike(live: LiveRun) -> None:
    """The contract has every replica export the rtai_queue_* gauges for the tasks it knows, so the `max by (task)`
    in dashboards, rules and KEDA triggers still has a value when one service is down or scaled to zero."""
    problems = []
    for name in ("rtai_queue_length", "rtai_queue_pending", "rtai_queue_oldest_age_seconds", "rtai_queue_workers"):
        by_job: dict[str, set[str]] = {}
        for series in live.query(name):
            by_job.setdefault(series["metric"]["job"], set()).add(series["metric"]["task"])
        for job in ("gateway", "inference-worker"):
            if not {"sentiment", "slow", "stream"} <= by_job.get(job, set()):
                problems.append(f"{job} exports {name} for tasks {sorted(by_job.get(job, set()))}")
    assert not problems, "\n".join(problems)


def test_every_final_frame_the_client_received_is_counted(live: LiveRun) -> None:
    """rtai_gateway_requests_total counts final frames sent, refusals included: what the error-ratio panel and alert
    read must match what clients saw."""
    # Series exist at zero for every known outcome from the start; compare the outcomes that happened.
    counted = {
        s["metric"]["outcome"]: round(float(s["value"][1]))
        for s in live.query("sum by (outcome) (rtai_gateway_requests_total) > 0")
    }
    received = dict(live.report.outcomes())
    assert counted == received
