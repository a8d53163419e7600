"""Helm charts: lint, render for Kubernetes 1.30-1.35, validate every document (core kinds with kubernetes-validate
--strict, CRDs against ../shared/schemas/crds), and check the rules the charts promise."""

from __future__ import annotations

import functools
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.local_service import SERVICES, unknown_settings_env
from tests.deploy.render import (
    CHARTS,
    CHARTS_DIR,
    KUBE_VERSIONS,
    SHARED_DIR,
    container_view,
    find,
    render_chart,
    values_files_for,
)
from tests.deploy.scenarios import Scenario, scenarios

SCENARIOS = scenarios()
BY_ID = {s.id: s for s in SCENARIOS}
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


@functools.cache
def rendered(scenario_id: str, kube_version: str = "1.33.0") -> list[dict[str, Any]]:
    s = BY_ID[scenario_id]
    return render_chart(s.chart, s.values_files, s.set_values, kube_version=kube_version)


@functools.cache
def _prerender() -> None:
    """Render the whole matrix once, two at a time (helm is quick; this keeps the suite at a few seconds)."""
    jobs = [(s.id, v) for s in SCENARIOS for v in KUBE_VERSIONS]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: rendered(*job), jobs))


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator | None:
    group, _, version = api_version.rpartition("/")
    path = SHARED_DIR / "schemas" / "crds" / group / f"{kind.lower()}_{version}.json"
    if not group or not path.is_file():
        return None
    schema = json.loads(path.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in WORKLOAD_KINDS]


# --------------------------------------------------------------------------------------------- lint and validate


@pytest.mark.parametrize("chart", CHARTS)
def test_helm_lint_strict(helm: str, chart: str) -> None:
    runs: list[list[str]] = [[], *(["-f", str(f)] for f in values_files_for(chart))]
    for extra in runs:
        proc = subprocess.run(
            [helm, "lint", "--strict", str(CHARTS_DIR / chart), *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"helm lint --strict {chart} {extra}:\n{proc.stdout}\n{proc.stderr}"


def test_every_values_file_names_its_charts() -> None:
    for path in sorted((CHARTS_DIR.parent / "values").glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# charts:"), f"{path.name}: first line must be '# charts: <chart>, ...'"
        named = {c.strip() for c in first.removeprefix("# charts:").split(",")}
        assert named, f"{path.name}: names no chart"
        assert named <= set(CHARTS), f"{path.name}: unknown chart in {named}"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_rendered_documents_validate(helm: str, shared_dir: Path, scenario: Scenario, kube_version: str) -> None:
    _prerender()
    docs = rendered(scenario.id, kube_version)
    assert docs, "nothing rendered"
    errors = []
    for doc in docs:
        ident = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
            continue
        except kubernetes_validate.SchemaNotFoundError:
            pass  # not a core kind: a CRD, checked below
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{ident}: {e.message} at {list(e.path)}")
            continue
        validator = crd_validator(doc["apiVersion"], doc["kind"])
        if validator is None:
            errors.append(f"{ident}: no schema for {doc['apiVersion']} {doc['kind']} in {shared_dir}/schemas/crds")
            continue
        errors += [f"{ident}: {e.message} at {list(e.path)}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


def test_unknown_crd_kind_is_an_error() -> None:
    assert crd_validator("monitoring.coreos.com/v1", "ServiceMonitor") is not None
    assert crd_validator("keda.sh/v1alpha1", "ScaledJob") is None
    assert crd_validator("example.com/v1", "Widget") is None


def test_crd_kinds_are_all_rendered_somewhere() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for s in SCENARIOS for d in rendered(s.id)}
    for expected in [
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1", "Ingress"),
    ]:
        assert expected in kinds, f"no scenario renders {expected}"


# --------------------------------------------------------------------------------------------- pod hardening


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_pods_are_hardened(scenario: Scenario) -> None:
    docs = rendered(scenario.id)
    one_shot = {d["metadata"]["name"] for d in docs if d["kind"] == "Job"}  # no replicas to spread, nothing to probe
    for name, pod in _pod_specs(docs):
        assert pod["enableServiceLinks"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        assert name in one_shot or pod.get("topologySpreadConstraints"), f"{name}: no topology spread"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert c["resources"]["requests"], (name, c["name"])
            assert name in one_shot or {"startupProbe", "livenessProbe", "readinessProbe"} <= c.keys(), name
            assert isinstance(c.get("command", c.get("args", [])), list)
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}/{c['name']}: a read-only root needs a writable /tmp"


@pytest.mark.parametrize(
    ("chart", "container", "drain_env"),
    [
        ("gateway", "gateway", "RTAI_GW_DRAIN_S"),
        ("inference-worker", "inference-worker", "RTAI_WORKER_SHUTDOWN_GRACE_S"),
    ],
)
def test_probes_and_grace_period(chart: str, container: str, drain_env: str) -> None:
    for s in (s for s in SCENARIOS if s.chart == chart):
        docs = rendered(s.id)
        (deploy,) = find(docs, "Deployment")
        pod = deploy["spec"]["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == container]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        env = {e["name"]: e.get("value") for e in c["env"]}
        pre = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        # The gateway's sockets may take limits.close_timeout_s after the drain to close, plus ~2 s of flushing.
        closing = float(env["RTAI_GW_LIMITS__CLOSE_TIMEOUT_S"]) + 2 if chart == "gateway" else 0
        assert pod["terminationGracePeriodSeconds"] > float(env[drain_env]) + pre + closing, s.id
        if chart == "inference-worker":
            start = c["startupProbe"]
            assert start["periodSeconds"] * start["failureThreshold"] >= 120, "startup probe too short for model loads"


def test_grace_period_shorter_than_drain_fails_to_render() -> None:
    with pytest.raises(RuntimeError, match="terminationGracePeriodSeconds"):
        render_chart("gateway", set_values={"gateway.drainSeconds": 30, "terminationGracePeriodSeconds": 30})
    with pytest.raises(RuntimeError, match="terminationGracePeriodSeconds"):
        render_chart("inference-worker", set_values={"terminationGracePeriodSeconds": 20})


def test_workers_scale_to_zero_with_keda_only() -> None:
    docs = render_chart("inference-worker", set_values={"autoscaling.mode": "keda", "autoscaling.minReplicas": 0})
    (so,) = find(docs, "ScaledObject")
    assert so["spec"]["minReplicaCount"] == 0
    assert so["spec"]["initialCooldownPeriod"] >= 300  # the first worker registers the task before any scale-in
    with pytest.raises(RuntimeError, match=r"needs autoscaling\.mode keda"):
        render_chart("inference-worker", set_values={"autoscaling.mode": "hpa", "autoscaling.minReplicas": 0})
    gw = container_view(
        render_chart("gateway", set_values={"gateway.queueWhenNoWorkers": True}), "Deployment", "gateway"
    )
    assert gw.env["RTAI_GW_ADMISSION__QUEUE_WHEN_NO_WORKERS"] == "true"


def test_workers_at_zero_declare_their_tasks_after_each_install_and_upgrade() -> None:
    """The hook Job runs the worker image's `declare` with the worker's own task, device and Redis settings, and is
    not one of the worker pods (their Service and PDB select by name and instance)."""
    zero = {"autoscaling.mode": "keda", "autoscaling.minReplicas": 0}
    docs = render_chart("inference-worker", set_values=zero)
    (job,) = find(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    declare = container_view(docs, "Job", "declare")
    worker = container_view(docs, "Deployment", "inference-worker")
    assert (declare.args, declare.image) == (["declare"], worker.image)
    assert not unknown_settings_env({*declare.env, *declare.env_refs}, SERVICES["inference-worker"])
    shared = ("RTAI_WORKER_TASKS", "RTAI_WORKER_DEVICE", "RTAI_WORKER_REDIS__SENTINELS", "RTAI_WORKER_REDIS__PREFIX")
    assert {k: declare.env[k] for k in shared} == {k: worker.env[k] for k in shared}
    assert declare.env_refs == {k: v for k, v in worker.env_refs.items() if k.startswith("RTAI_WORKER_REDIS__")}
    (svc,) = find(docs, "Service")
    assert not svc["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert not find(render_chart("inference-worker", set_values={"autoscaling.mode": "keda"}), "Job")
    assert "RTAI_WORKER_RETIRED_TASKS" not in declare.env  # set only when there are some (older images refuse it)
    # Retired tasks are removed by the same Job: where workers scale to zero, `declare` does it too; otherwise the Job
    # only forgets them, and asks for no accelerator (the GPU workers may hold every one).
    at_zero = render_chart("inference-worker", set_values={**zero, "worker.retiredTasks": "old-a, old_b"})
    assert container_view(at_zero, "Job", "declare").env["RTAI_WORKER_RETIRED_TASKS"] == "old-a, old_b"
    gpu = {"worker.device": "cuda", "resources.limits": {"nvidia.com/gpu": 1}}
    retiring = render_chart("inference-worker", set_values={**gpu, "worker.retiredTasks": "old-a, old_b"})
    forget = container_view(retiring, "Job", "declare")
    assert forget.args == ["forget", "old-a", "old_b"]
    assert "RTAI_WORKER_RETIRED_TASKS" not in forget.env
    (job,), (workers,) = find(retiring, "Job"), find(retiring, "Deployment")
    assert "nvidia.com/gpu" in str(workers["spec"]["template"]["spec"]["containers"][0]["resources"])
    assert "nvidia.com/gpu" not in str(job["spec"]["template"]["spec"]["containers"][0]["resources"])
    assert "RTAI_WORKER_RETIRED_TASKS" not in container_view(retiring, "Deployment", "inference-worker").env


def test_redis_topologies_that_refuse_every_write_or_failover_fail_to_render() -> None:
    # One pod and min-replicas-to-write 1: the master has no replica to count, so it refuses every write.
    with pytest.raises(RuntimeError, match="minReplicasToWrite"):
        render_chart("redis", set_values={"replicas": 1, "sentinel.quorum": 1})
    with pytest.raises(RuntimeError, match="quorum"):
        render_chart("redis", set_values={"replicas": 2, "sentinel.quorum": 3, "redis.minReplicasToWrite": 0})
    render_chart("redis", set_values={"replicas": 1, "sentinel.quorum": 1, "redis.minReplicasToWrite": 0})


@pytest.mark.parametrize(
    ("chart", "bad"),
    [
        ("gateway", {"autoscaling.mode": "both"}),
        ("gateway", {"securityContext.readOnlyRootFilesystem": False}),
        ("gateway", {"typo": "1"}),
        ("inference-worker", {"worker.tasks": "sentiment"}),
        ("inference-worker", {"worker.tasks": "Sentiment=vader"}),
        ("inference-worker", {"worker.tasks": "a.b=vader"}),
        ("inference-worker", {"worker.retiredTasks": "old=vader"}),
        ("inference-worker", {"worker.device": "tpu"}),
        ("redis", {"redis.maxmemoryPolicy": "allkeys-lru"}),
    ],
)
def test_values_schema_rejects(chart: str, bad: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match="schema"):
        render_chart(chart, set_values=bad)


# --------------------------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.id)
def test_selectors_and_autoscalers_wire_up(scenario: Scenario) -> None:
    docs = rendered(scenario.id)
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOAD_KINDS}
    pod_labels = {n: w["spec"]["template"]["metadata"]["labels"] for n, w in workloads.items()}

    def selects(selector: dict[str, str]) -> list[str]:
        return [n for n, labels in pod_labels.items() if selector.items() <= labels.items()]

    services = find(docs, "Service")
    for svc in services:
        assert selects(svc["spec"]["selector"]), f"Service {svc['metadata']['name']} selects no pods"
    for pdb in find(docs, "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"])
    for np in find(docs, "NetworkPolicy"):
        assert selects(np["spec"]["podSelector"]["matchLabels"])
    for sm in find(docs, "ServiceMonitor"):
        picked = [
            s for s in services if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert picked, "ServiceMonitor selects no Service"
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in picked[0]["spec"]["ports"]}

    targets: dict[str, list[str]] = {}
    for d in find(docs, "HorizontalPodAutoscaler") + find(docs, "ScaledObject"):
        ref = d["spec"]["scaleTargetRef"]
        assert ref["name"] in workloads
        assert workloads[ref["name"]]["kind"] == ref.get("kind", "Deployment")
        targets.setdefault(ref["name"], []).append(d["kind"])
    for name, kinds in targets.items():
        assert len(kinds) == 1, f"{name} is scaled by {kinds}: never KEDA and an HPA together"
        assert "replicas" not in workloads[name]["spec"], f"{name}: replicas set while an autoscaler owns it"


@pytest.mark.parametrize("mode", ["none", "keda", "hpa"])
@pytest.mark.parametrize("chart", ["gateway", "inference-worker"])
def test_autoscaling_switch_renders_exactly_one(chart: str, mode: str) -> None:
    docs = render_chart(chart, set_values={"autoscaling.mode": mode})
    kinds = [d["kind"] for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert kinds == {"none": [], "keda": ["ScaledObject"], "hpa": ["HorizontalPodAutoscaler"]}[mode]


def test_keda_queries_follow_the_metric_contract() -> None:
    (gw,) = find(rendered("gateway:keda+monitoring"), "ScaledObject")
    queries = [t["metadata"]["query"] for t in gw["spec"]["triggers"]]
    assert any("rtai_gateway_connections" in q for q in queries)
    assert all(t["type"] == "prometheus" for t in gw["spec"]["triggers"])
    docs = render_chart(
        "inference-worker",
        set_values={"autoscaling.mode": "keda", "worker.tasks": "sentiment=vader,embed=minilm-embed"},
    )
    (wk,) = find(docs, "ScaledObject")
    trig = {t["name"]: t for t in wk["spec"]["triggers"]}
    backlog = trig["backlog"]["metadata"]["query"]
    assert "max by (task) (rtai_queue_length{" in backlog
    assert "max by (task) (rtai_queue_pending{" in backlog
    assert 'task=~"sentiment|embed"' in backlog
    assert trig["backlog"]["metricType"] == "AverageValue"
    assert "rtai_queue_oldest_age_seconds" in trig["oldest-age"]["metadata"]["query"]


def test_redis_network_policy_admits_only_gateway_and_worker() -> None:
    (np,) = find(rendered("redis:default"), "NetworkPolicy")
    peers = np["spec"]["ingress"][0]["from"]
    comps = [e for p in peers for e in p.get("podSelector", {}).get("matchExpressions", [])]
    assert comps == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["gateway", "inference-worker"]}
    ]
    for chart in ("gateway", "inference-worker"):
        (dep,) = find(rendered(f"{chart}:default"), "Deployment")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "rtai"
        assert labels["app.kubernetes.io/component"] == chart


def test_redis_config_never_evicts() -> None:
    (cm,) = [d for d in find(rendered("redis:default"), "ConfigMap") if d["metadata"]["name"].endswith("-scripts")]
    conf = cm["data"]["redis.conf"]
    assert "maxmemory-policy noeviction" in conf
    assert "appendonly yes" in conf


# --------------------------------------------------------------------------------------------- dashboards and rules


@pytest.mark.parametrize("chart", ["gateway", "inference-worker"])
def test_dashboards_and_rules_ship_from_the_chart_folders(chart: str) -> None:
    # Every rule ships with the gateway chart; the worker chart has no rules/ and no prometheusRule key.
    rules_on = {"prometheusRule.enabled": True} if chart == "gateway" else {}
    docs = render_chart(chart, set_values={"dashboards.enabled": True, **rules_on})
    files = sorted((CHARTS_DIR / chart / "dashboards").glob("*.json"))
    cms = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(cms) == len(files)
    shipped = {k: json.loads(v) for cm in cms for k, v in cm["data"].items()}
    assert shipped == {f.name: json.loads(f.read_text()) for f in files}
    groups = [
        g
        for f in sorted((CHARTS_DIR / chart / "rules").glob("*.yaml"))
        for g in yaml.safe_load(f.read_text())["groups"]
    ]
    rules = find(docs, "PrometheusRule")
    assert (rules[0]["spec"]["groups"] if rules else []) == groups


@pytest.mark.parametrize("count", [0, 3])
def test_dashboard_glob_takes_any_number_of_files(tmp_path: Path, count: int) -> None:
    import shutil

    chart = tmp_path / "gateway"
    shutil.copytree(CHARTS_DIR / "gateway", chart, ignore=shutil.ignore_patterns("*.json", "*.yaml.bak"))
    for f in (chart / "rules").glob("*.yaml"):
        f.unlink()
    for i in range(count):
        (chart / "dashboards" / f"Board_{i}.json").write_text(json.dumps({"title": f"b{i}", "panels": []}))
    (chart / "rules" / "extra.yaml").write_text(
        "groups:\n  - name: extra\n    rules:\n      - record: a:b\n        expr: vector(1)\n"
    )
    import tests.deploy.render as r

    old = r.CHARTS_DIR
    r.CHARTS_DIR = tmp_path
    try:
        docs = render_chart("gateway", set_values={"dashboards.enabled": True, "prometheusRule.enabled": True})
    finally:
        r.CHARTS_DIR = old
    cms = [d for d in find(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert sorted(k for cm in cms for k in cm["data"]) == [f"Board_{i}.json" for i in range(count)]
    assert len({cm["metadata"]["name"] for cm in cms}) == count
    (rule,) = find(docs, "PrometheusRule")
    assert rule["spec"]["groups"][0]["name"] == "extra"
