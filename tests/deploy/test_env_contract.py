"""The env vars the charts set are exactly settings the services read: every RTAI_GW_*/RTAI_WORKER_* name maps to a
field of the settings class (nested with `__`), and the rendered env loads into that class."""

from __future__ import annotations

import importlib

import pytest
from pydantic import BaseModel

from tests.deploy.render import container_view, render_chart
from tests.deploy.scenarios import SCENARIOS_BY_CHART

SERVICES = {
    "gateway": ("gateway", "RTAI_GW_", "rtai_gateway.settings", "GatewaySettings"),
    "inference-worker": ("inference-worker", "RTAI_WORKER_", "rtai_worker.settings", "WorkerSettings"),
}


def _field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        key = prefix + name.upper()
        out.add(key)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= _field_paths(ann, key + "__")
    return out


@pytest.mark.parametrize("chart", SERVICES)
def test_chart_env_names_are_settings_fields(chart: str) -> None:
    container, prefix, module, cls_name = SERVICES[chart]
    settings_cls = getattr(importlib.import_module(module), cls_name)
    known = _field_paths(settings_cls)
    for scenario in SCENARIOS_BY_CHART[chart]:
        view = container_view(
            render_chart(chart, scenario.values_files, scenario.set_values),
            "Deployment",
            container,
        )
        names = {n for n in (*view.env, *view.env_refs) if n.startswith(prefix)}
        unknown = {n for n in names if n.removeprefix(prefix) not in known}
        assert not unknown, f"{scenario.id}: env vars that {cls_name} does not read: {sorted(unknown)}"


@pytest.mark.parametrize("chart", SERVICES)
def test_rendered_env_loads_into_settings(chart: str, monkeypatch: pytest.MonkeyPatch) -> None:
    container, prefix, module, cls_name = SERVICES[chart]
    settings_cls = getattr(importlib.import_module(module), cls_name)
    for scenario in SCENARIOS_BY_CHART[chart]:
        view = container_view(
            render_chart(chart, scenario.values_files, scenario.set_values),
            "Deployment",
            container,
        )
        secrets = {
            (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]): "s3cret-for-test"
            for ref in view.env_refs.values()
            if "secretKeyRef" in ref
        }
        with monkeypatch.context() as m:
            for name in list(__import__("os").environ):
                if name.startswith(prefix):
                    m.delenv(name)
            for name, value in view.resolved_env(secrets).items():
                if name.startswith(prefix):
                    m.setenv(name, value)
            settings = settings_cls()
        if "RTAI_GW_PORT" in view.env:
            assert settings.port == view.port("http")
        if "RTAI_WORKER_HTTP_PORT" in view.env:
            assert settings.http_port == view.port("http-metrics")
        assert bool(settings.redis.sentinels) == (f"{prefix}REDIS__SENTINELS" in view.env), scenario.id
