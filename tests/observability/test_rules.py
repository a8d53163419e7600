"""Prometheus rules and dashboard expressions: they parse, the alerts are unit-tested and each has a runbook."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from obs_support import (
    PROMTOOL,
    RULES,
    RULES_TEST,
    alerting_rules,
    documented_metrics,
    load_rules,
    metrics_in,
    panel_queries,
    recording_rules,
    runbook_anchors,
)


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)


def test_rules_file_passes_promtool_check() -> None:
    done = _promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_panel_expression_parses(tmp_path: Path) -> None:
    """promtool has no bare "parse this expression": each query becomes a recording rule in a file of its own group,
    so an error names the panel."""
    queries = panel_queries()
    groups = [
        {"name": q.name, "rules": [{"record": f"panel:check:{i}", "expr": q.promql}]} for i, q in enumerate(queries)
    ]
    path = tmp_path / "panels.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    done = _promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = _promtool("test", "rules", RULES_TEST)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unit_tests_make_every_alert_fire() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    quiet = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", []) if not case.get("exp_alerts")
    }
    alerts = {r["alert"] for r in alerting_rules()}
    assert alerts - fired == set(), "alerts no unit test makes fire"
    assert alerts - quiet == set(), "alerts no unit test checks stay quiet"


def test_the_four_alerts_the_issue_asks_for_exist() -> None:
    alerts = {r["alert"] for r in alerting_rules()}
    assert {
        "RtaiLatencyP99OverSLO",
        "RtaiBacklogAgeRising",
        "RtaiNoLiveWorkers",
        "RtaiScaleFromZeroStalled",
        "RtaiErrorRatioHigh",
    } <= alerts


def test_every_alert_has_severity_summary_and_a_runbook_section() -> None:
    anchors = runbook_anchors()
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        ann = rule["annotations"]
        assert ann["summary"], rule["alert"]
        assert ann["description"], rule["alert"]
        doc, _, anchor = ann["runbook_url"].partition("#")
        assert doc == "docs/runbook.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/runbook.md has no section for {rule['alert']}"


def test_recording_rules_follow_the_naming_convention_and_cover_quantiles_and_error_ratios() -> None:
    names = {r["record"] for r in recording_rules()}
    for name in names:
        level, metric, ops = name.split(":")
        assert level, name
        assert metric.startswith("rtai_"), name
        assert ops, name
    assert "task_quantile:rtai_gateway_request_duration_seconds:histogram_quantile_5m" in names
    assert any("ratio" in n for n in names)
    quantiles = {
        r["labels"]["quantile"]
        for r in recording_rules()
        if r["record"] == "task_quantile:rtai_gateway_request_duration_seconds:histogram_quantile_5m"
    }
    assert quantiles == {"0.5", "0.95", "0.99"}


def test_every_metric_a_rule_reads_is_documented() -> None:
    documented = documented_metrics()
    unknown = {r.get("record") or r["alert"]: metrics_in(r["expr"]) - documented.keys() for r in load_rules()}
    assert not {k: v for k, v in unknown.items() if v}


def test_backlog_gauges_in_rules_are_aggregated_with_max() -> None:
    for rule in load_rules():
        expr = " ".join(rule["expr"].split())
        direct = expr.count("(rtai_queue_") + expr.count(" rtai_queue_")
        assert direct == expr.count("max by (task) (rtai_queue_"), rule.get("record") or rule["alert"]
