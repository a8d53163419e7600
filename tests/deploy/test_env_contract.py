"""The env vars the charts set are exactly settings the services read: every RTAI_GW_*/RTAI_WORKER_* name maps to a
field of the settings class (nested with `__`), and the rendered env loads into that class."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.deploy.local_service import SERVICES, settings_class, unknown_settings_env
from tests.deploy.render import container_view, render_chart
from tests.deploy.scenarios import SCENARIOS_BY_CHART


@pytest.mark.parametrize("chart", SERVICES)
def test_chart_env_names_are_settings_fields(chart: str) -> None:
    spec = SERVICES[chart]
    for scenario in SCENARIOS_BY_CHART[chart]:
        view = container_view(
            render_chart(chart, scenario.values_files, scenario.set_values),
            "Deployment",
            spec.container,
        )
        unknown = unknown_settings_env({*view.env, *view.env_refs}, spec)
        assert not unknown, f"{scenario.id}: env vars that {spec.settings} does not read: {unknown}"


@pytest.mark.parametrize("chart", SERVICES)
def test_rendered_env_loads_into_settings(chart: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SERVICES[chart]
    prefix = spec.prefix
    settings_cls = settings_class(spec)
    for scenario in SCENARIOS_BY_CHART[chart]:
        view = container_view(
            render_chart(chart, scenario.values_files, scenario.set_values),
            "Deployment",
            spec.container,
        )
        secrets = {
            (ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]): "s3cret-for-test"
            for ref in view.env_refs.values()
            if "secretKeyRef" in ref
        }
        with monkeypatch.context() as m:
            for name in list(os.environ):
                if name.startswith(prefix):
                    m.delenv(name)
            for name, value in view.resolved_env(secrets).items():
                if name.startswith(prefix):
                    m.setenv(name, value)
            settings: Any = settings_cls()
        if "RTAI_GW_PORT" in view.env:
            assert settings.port == view.port("http")
        if "RTAI_WORKER_HTTP_PORT" in view.env:
            assert settings.http_port == view.port("http-metrics")
        assert bool(settings.redis.sentinels) == (f"{prefix}REDIS__SENTINELS" in view.env), scenario.id
