"""What the chart values promise, rendered: client auth, the public surface (Ingress, NetworkPolicy, Host names), the
grace period, zone spread, the worker's task names, and the shipped values files (tracing port, GPU task names)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.local_service import SERVICES, unknown_settings_env
from tests.deploy.render import CHARTS_DIR, VALUES_DIR, container_view, find, render_chart

PRIVATE_PATHS = ("/metrics", "/healthz", "/readyz")


def _routes(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    (ing,) = find(docs, "Ingress")
    return [(p["path"], p["pathType"]) for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]]


def _routed(path: str, routes: list[tuple[str, str]]) -> bool:
    """Whether a request path matches an Ingress path (Kubernetes' Exact and element-wise Prefix matching)."""
    for route, kind in routes:
        if kind == "Exact" and path == route:
            return True
        prefix = route.rstrip("/")
        if kind != "Exact" and (path == prefix or path.startswith(prefix + "/")):
            return True
    return False


# --------------------------------------------------------------------------------------------- public surface


@pytest.mark.parametrize("values", [(), (VALUES_DIR / "production-gateway.yaml",)], ids=["default", "production"])
def test_ingress_routes_what_clients_use_and_not_metrics_or_probes(values: tuple[Any, ...]) -> None:
    routes = _routes(render_chart("gateway", values, {"ingress.enabled": True}))
    for path in ("/v1/ws", "/v1/tasks", "/", "/static/app.js"):
        assert _routed(path, routes), f"{path} is not routed: {routes}"
    for path in PRIVATE_PATHS:
        assert not _routed(path, routes), f"{path} is public: {routes}"


@pytest.mark.parametrize(
    "paths",
    [[{"path": "/", "pathType": "Prefix"}], [{"path": "/metrics", "pathType": "Exact"}]],
    ids=["catch-all", "metrics"],
)
def test_an_ingress_path_that_would_publish_metrics_fails_to_render(paths: list[dict[str, str]]) -> None:
    with pytest.raises(RuntimeError, match="ingress path"):
        render_chart("gateway", set_values={"ingress.enabled": True, "ingress.hosts": [{"host": "a", "paths": paths}]})


def test_a_restricted_gateway_port_needs_its_scrapers_named() -> None:
    """/metrics shares the gateway port: with ingressFrom set, metricsFrom must name Prometheus' peers. An empty one
    either shut Prometheus out (no rule) or, as a port-only rule, admitted everyone and undid ingressFrom."""
    edge = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    with pytest.raises(RuntimeError, match=r"networkPolicy\.metricsFrom"):
        render_chart("gateway", set_values={"networkPolicy.ingressFrom": edge})
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    set_values = {"networkPolicy.ingressFrom": edge, "networkPolicy.metricsFrom": monitoring}
    (np,) = find(render_chart("gateway", set_values=set_values), "NetworkPolicy")
    assert [r.get("from") for r in np["spec"]["ingress"]] == [edge, monitoring]
    (np,) = find(render_chart("gateway"), "NetworkPolicy")
    assert np["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]  # no ingressFrom: one rule


# --------------------------------------------------------------------------------------------- client auth


def _gateway(set_values: dict[str, Any], values: tuple[Any, ...] = ()) -> Any:
    return container_view(render_chart("gateway", values, set_values), "Deployment", "gateway")


def _auth_mount(gw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    (c,) = [c for c in gw.pod_spec["containers"] if c["name"] == "gateway"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "auth"]
    (volume,) = [v for v in gw.pod_spec["volumes"] if v["name"] == "auth"]
    return mount, volume


def test_the_gateway_answers_its_service_and_ingress_names_and_malformed_ones_fail_to_render() -> None:
    from rtai_gateway.settings import GatewaySettings

    default = _gateway({}).env["RTAI_GW_ALLOWED_HOSTS"].split(",")
    svc = default[0]
    assert default[1:] == [f"{svc}.rtai", f"{svc}.rtai.svc", f"{svc}.rtai.svc.cluster.local"], default
    gw = _gateway({"ingress.enabled": True, "gateway.allowedHosts": ["lb.example", "*.apps.example"]})
    hosts = gw.env["RTAI_GW_ALLOWED_HOSTS"]
    assert hosts.split(",")[4:] == ["rtai.local", "lb.example", "*.apps.example"]  # the Ingress host, then the extras
    assert not unknown_settings_env({*gw.env, *gw.env_refs}, SERVICES["gateway"])
    assert GatewaySettings(allowed_hosts=hosts).allowed_hosts == hosts.split(",")
    for bad in ("gw.example:8000", "10.0.0.5", "10.0.0.5:8000", "*."):
        with pytest.raises(RuntimeError, match="allowedHosts"):
            render_chart("gateway", set_values={"gateway.allowedHosts": [bad]})


def test_auth_none_by_default_mounts_nothing() -> None:
    gw = _gateway({})
    assert gw.env["RTAI_GW_AUTH__MODE"] == "none"
    assert "auth" not in {v["name"] for v in gw.pod_spec["volumes"]}


def test_api_key_mode_reads_its_keys_file_from_the_mounted_secret() -> None:
    gw = _gateway({"auth.mode": "api_key", "auth.existingSecret": "gw-auth"})
    mount, volume = _auth_mount(gw)
    assert mount == {"name": "auth", "mountPath": "/etc/rtai/auth", "readOnly": True}
    assert "subPath" not in mount  # a subPath mount would never see the Secret's updates
    assert volume["secret"]["secretName"] == "gw-auth"
    assert gw.env["RTAI_GW_AUTH__MODE"] == "api_key"
    assert gw.env["RTAI_GW_AUTH__API_KEYS_FILE"] == "/etc/rtai/auth/api-keys"
    assert not unknown_settings_env({*gw.env, *gw.env_refs}, SERVICES["gateway"])


def test_jwt_mode_takes_a_jwks_file_or_a_secret_from_the_secret() -> None:
    jwks = _gateway(
        {"auth.mode": "jwt", "auth.existingSecret": "gw-auth", "auth.jwt.jwksKey": "jwks.json", "auth.jwt.issuer": "i"}
    )
    assert jwks.env["RTAI_GW_AUTH__JWT__JWKS_FILE"] == "/etc/rtai/auth/jwks.json"
    assert jwks.env["RTAI_GW_AUTH__JWT__ISSUER"] == "i"
    assert "RTAI_GW_AUTH__JWT__SECRET" not in {*jwks.env, *jwks.env_refs}
    _auth_mount(jwks)
    hs = _gateway({"auth.mode": "jwt", "auth.existingSecret": "gw-auth", "auth.jwt.secretKey": "hs256"})
    assert hs.env_refs["RTAI_GW_AUTH__JWT__SECRET"] == {"secretKeyRef": {"name": "gw-auth", "key": "hs256"}}
    assert "RTAI_GW_AUTH__JWT__JWKS_FILE" not in hs.env
    for gw in (jwks, hs):
        assert not unknown_settings_env({*gw.env, *gw.env_refs}, SERVICES["gateway"])


@pytest.mark.parametrize(
    ("set_values", "message"),
    [
        ({"auth.mode": "api_key"}, "existingSecret"),
        ({"auth.mode": "jwt", "auth.existingSecret": "s"}, "exactly one"),
        ({"auth.mode": "jwt", "auth.existingSecret": "s", "auth.jwt.secretKey": "a", "auth.jwt.jwksKey": "b"}, "one"),
        ({"auth.mode": "oauth"}, "schema"),
        ({"auth.keysFile": "/x"}, "schema"),
    ],
)
def test_incomplete_auth_fails_to_render(set_values: dict[str, Any], message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        render_chart("gateway", set_values=set_values)


def test_production_gateway_authenticates_its_clients() -> None:
    gw = _gateway({}, (VALUES_DIR / "production-gateway.yaml",))
    assert gw.env["RTAI_GW_AUTH__MODE"] == "jwt"
    mount, _ = _auth_mount(gw)
    assert gw.env["RTAI_GW_AUTH__JWT__JWKS_FILE"].startswith(mount["mountPath"] + "/")


# --------------------------------------------------------------------------------------------- shutdown, spread


def test_gateway_grace_period_covers_the_sockets_close_timeout() -> None:
    """preStop 5 s + drain 10 s + close timeout 10 s + 2 s of flush = 27 s: 27 must fail, 28 render."""
    with pytest.raises(RuntimeError, match="closeTimeoutSeconds"):
        render_chart("gateway", set_values={"terminationGracePeriodSeconds": 27})
    gw = _gateway({"terminationGracePeriodSeconds": 28})
    assert gw.env["RTAI_GW_LIMITS__CLOSE_TIMEOUT_S"] == "10"
    with pytest.raises(RuntimeError, match="closeTimeoutSeconds"):
        render_chart("gateway", set_values={"gateway.closeTimeoutSeconds": 20})
    for values in ([], [VALUES_DIR / "production-gateway.yaml"]):
        render_chart("gateway", values)


@pytest.mark.parametrize("values", [(), (VALUES_DIR / "production-redis.yaml",)], ids=["default", "production"])
def test_redis_pods_spread_over_nodes_and_zones(values: tuple[Any, ...]) -> None:
    (sts,) = find(render_chart("redis", values), "StatefulSet")
    spread = sts["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


# --------------------------------------------------------------------------------------------- worker tasks


def test_a_retired_task_that_is_still_served_fails_to_render() -> None:
    with pytest.raises(RuntimeError, match=r"retiredTasks names embed"):
        render_chart(
            "inference-worker",
            set_values={"worker.tasks": "sentiment=vader, embed=minilm-embed", "worker.retiredTasks": "old, embed"},
        )
    render_chart("inference-worker", set_values={"worker.tasks": "sentiment=vader", "worker.retiredTasks": "embed"})


def test_worker_task_names_follow_the_worker_settings_pattern() -> None:
    source = (CHARTS_DIR.parents[1] / "services/inference-worker/src/rtai_worker/settings.py").read_text()
    (code,) = re.findall(r'_TASK = re\.compile\(r"(.+)"\)', source)
    assert code == r"^[a-z0-9][a-z0-9_\-]{0,63}$"
    for name, ok in [("embed-gpu", True), ("a_b9", True), ("x" * 64, True), ("x" * 65, False), ("Embed", False)]:
        assert bool(re.fullmatch(code, name)) is ok, name
        for key, value in (("worker.tasks", f"{name}=vader"), ("worker.retiredTasks", name)):
            if ok:
                render_chart("inference-worker", set_values={key: value})
            else:
                with pytest.raises(RuntimeError, match="schema"):
                    render_chart("inference-worker", set_values={key: value})


def test_the_worker_chart_ships_no_rules_and_takes_no_prometheus_rule_key() -> None:
    """Every rule ships with the gateway chart: a worker key that rendered nothing would only mislead."""
    assert not (CHARTS_DIR / "inference-worker" / "rules").exists()
    with pytest.raises(RuntimeError, match="schema"):
        render_chart("inference-worker", set_values={"prometheusRule.enabled": True})
    docs = render_chart("gateway", set_values={"prometheusRule.enabled": True})
    groups = {g["name"] for g in find(docs, "PrometheusRule")[0]["spec"]["groups"]}
    assert "rtai.alerts" in groups


# --------------------------------------------------------------------------------------------- shipped values files


def test_otlp_endpoints_use_the_http_port() -> None:
    """The services export OTLP over HTTP (opentelemetry-exporter-otlp-proto-http): 4318, never gRPC's 4317."""
    endpoints = {}
    for path in sorted(VALUES_DIR.glob("*.yaml")):
        endpoint = ((yaml.safe_load(path.read_text()) or {}).get("otel") or {}).get("endpoint")
        if endpoint:
            endpoints[path.name] = endpoint
    assert endpoints, "no values file sets otel.endpoint"
    assert all(e.rstrip("/").endswith(":4318") for e in endpoints.values()), endpoints


def test_gpu_workers_serve_task_names_of_their_own() -> None:
    """docs/models.md: a CPU and a GPU worker compute different vectors, so they never share a task name."""

    def tasks(docs: list[dict[str, Any]]) -> set[str]:
        env = container_view(docs, "Deployment", "inference-worker").env
        return {pair.split("=")[0].strip() for pair in env["RTAI_WORKER_TASKS"].split(",")}

    gpu = tasks(render_chart("inference-worker", [VALUES_DIR / "gpu.yaml"]))
    assert all(t.endswith("-gpu") for t in gpu), gpu
    for cpu_values in ([], [VALUES_DIR / "production-inference-worker.yaml"], [VALUES_DIR / "kind.yaml"]):
        assert not gpu & tasks(render_chart("inference-worker", cpu_values)), cpu_values
    gpu_image = container_view(
        render_chart("inference-worker", [VALUES_DIR / "gpu.yaml"]), "Deployment", "inference-worker"
    )
    assert gpu_image.image.split(":")[0].endswith("-gpu")
