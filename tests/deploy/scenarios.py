"""The chart renderings every deploy test checks: default values, each shipped values file, and the combinations
skaffold uses. One list, so a new values file is validated as soon as it names its chart in its first line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.render import CHARTS, VALUES_DIR, values_files_for


@dataclass(frozen=True)
class Scenario:
    chart: str
    name: str
    values_files: tuple[Path, ...] = ()
    set_values: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.chart}:{self.name}"


def _extra(chart: str) -> list[Scenario]:
    v = VALUES_DIR
    if chart == "gateway":
        return [
            Scenario(chart, "skaffold-kind", (v / "kind.yaml", v / "kind-gateway.yaml")),
            Scenario(chart, "hpa+ingress", set_values={"autoscaling.mode": "hpa", "ingress.enabled": True}),
            Scenario(
                chart,
                "keda+monitoring",
                set_values={
                    "autoscaling.mode": "keda",
                    "serviceMonitor.enabled": True,
                    "prometheusRule.enabled": True,
                    "dashboards.enabled": True,
                },
            ),
        ]
    if chart == "inference-worker":
        return [
            Scenario(chart, "skaffold-kind", (v / "kind.yaml",)),
            Scenario(chart, "skaffold-kind-gpu", (v / "kind.yaml", v / "gpu.yaml")),
            Scenario(chart, "hpa", set_values={"autoscaling.mode": "hpa"}),
            Scenario(chart, "keda-from-zero", set_values={"autoscaling.mode": "keda", "autoscaling.minReplicas": 0}),
        ]
    return [Scenario(chart, "no-auth-no-persistence", set_values={"auth.enabled": False, "persistence.enabled": False})]


def scenarios() -> list[Scenario]:
    out: list[Scenario] = []
    for chart in CHARTS:
        out.append(Scenario(chart, "default"))
        out += [Scenario(chart, f.stem, (f,)) for f in values_files_for(chart)]
        out += _extra(chart)
    return out


SCENARIOS_BY_CHART: dict[str, list[Scenario]] = {}
for _s in scenarios():
    SCENARIOS_BY_CHART.setdefault(_s.chart, []).append(_s)
