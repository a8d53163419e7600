"""What the cluster would do with a ScaledObject: KEDA's prometheus-trigger semantics feeding the HPA controller's
algorithm, applied to recorded metric readings. Pure functions, no cluster.

Per trigger (KEDA hands each one to the HPA as an external metric):
- `AverageValue` (target.averageValue = threshold): desired = ceil(value / threshold) — the query's total spread over
  the replicas;
- `Value` (target.value = threshold): desired = ceil(current * value / threshold);
- a ratio within the HPA tolerance (0.1) of 1 keeps the current count; an empty result is 0 with ignoreNullValues.
Then the HPA takes the largest desired count over the triggers, bounds it by min/max replicas, keeps the highest
recommendation of the scale-down stabilization window, and limits each step by the scale-up/scale-down policies
(defaults: up by max(100 %, 4 pods) per 15 s; down as rendered). With minReplicaCount 0, KEDA scales to zero when
every trigger is at or below its activationThreshold (and activates above it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TOLERANCE = 0.1
DEFAULT_SCALE_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                                 {"type": "Pods", "value": 4, "periodSeconds": 15}]}  # fmt: skip
DEFAULT_SCALE_DOWN = {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                      "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}  # fmt: skip


@dataclass(frozen=True)
class Trigger:
    name: str
    query: str
    metric_type: str  # AverageValue | Value
    threshold: float
    activation: float = 0.0

    def desired(self, value: float | None, current: int) -> int:
        v = 0.0 if value is None else value
        if self.metric_type == "AverageValue":
            ratio = v / (self.threshold * current) if current else math.inf
        elif self.metric_type == "Value":
            ratio = v / self.threshold
        else:
            raise ValueError(f"metricType {self.metric_type!r}")
        if current and abs(ratio - 1.0) <= TOLERANCE:
            return current
        if self.metric_type == "AverageValue":
            return math.ceil(v / self.threshold)
        return math.ceil(ratio * current)


@dataclass(frozen=True)
class ScaledTarget:
    name: str
    min_replicas: int
    max_replicas: int
    triggers: tuple[Trigger, ...]
    scale_up: dict[str, Any] = field(default_factory=lambda: DEFAULT_SCALE_UP)
    scale_down: dict[str, Any] = field(default_factory=lambda: DEFAULT_SCALE_DOWN)

    @classmethod
    def from_scaled_object(cls, doc: dict[str, Any]) -> ScaledTarget:
        spec = doc["spec"]
        triggers = []
        for t in spec["triggers"]:
            if t["type"] != "prometheus":
                raise ValueError(f"trigger type {t['type']!r} is not simulated")
            md = t["metadata"]
            if md.get("ignoreNullValues", "true") != "true":
                raise ValueError("only ignoreNullValues=true is simulated (empty result = 0)")
            triggers.append(
                Trigger(
                    t.get("name", md["query"]),
                    md["query"],
                    t.get("metricType", "AverageValue"),
                    float(md["threshold"]),
                    float(md.get("activationThreshold", 0)),
                )
            )
        behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
        return cls(
            name=doc["metadata"]["name"],
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            triggers=tuple(triggers),
            scale_up={**DEFAULT_SCALE_UP, **behavior.get("scaleUp", {})},
            scale_down={**DEFAULT_SCALE_DOWN, **behavior.get("scaleDown", {})},
        )


@dataclass(frozen=True)
class Step:
    t: float
    values: dict[str, float | None]
    per_trigger: dict[str, int]
    recommendation: int  # formula + bounds (what this reading alone asks for)
    replicas: int  # after stabilization and policies (what the cluster would run)


def _policy_limit(behavior: dict[str, Any], history: list[tuple[float, int]], t: float, up: bool) -> int:
    """Most (up) or fewest (down) replicas the policies allow at t, given the replica history."""
    limits = []
    for p in behavior["policies"]:
        start = next((r for (ht, r) in reversed(history) if ht <= t - p["periodSeconds"]), history[0][1])
        # replicas at the start of the period (the HPA counts changes made within it)
        if p["type"] == "Pods":
            limits.append(start + p["value"] if up else start - p["value"])
        else:
            change = start * p["value"] / 100
            limits.append(math.ceil(start + change) if up else math.ceil(start - change))
    select = behavior.get("selectPolicy", "Max")
    if select == "Disabled":
        return history[-1][1]
    pick_more_change = select == "Max"
    return int((max if up == pick_more_change else min)(limits))


def simulate(
    target: ScaledTarget, readings: list[tuple[float, dict[str, float | None]]], start_replicas: int | None = None
) -> list[Step]:
    """One HPA sync per reading (time t in seconds; windows and policy periods in the same seconds)."""
    current = target.min_replicas if start_replicas is None else start_replicas
    history: list[tuple[float, int]] = [(readings[0][0] if readings else 0.0, current)]
    recs: list[tuple[float, int]] = []
    out: list[Step] = []
    for t, values in readings:
        per = {tr.name: tr.desired(values.get(tr.name), max(current, 1)) for tr in target.triggers}
        rec = max(per.values())
        active = any((values.get(tr.name) or 0.0) > tr.activation for tr in target.triggers)
        if target.min_replicas == 0 and not active:
            rec = 0
        elif target.min_replicas == 0 and current == 0:
            rec = max(rec, 1)  # KEDA activates 0 -> 1, the HPA takes over from there
        rec = min(max(rec, target.min_replicas), target.max_replicas)
        recs.append((t, rec))
        down_window = float(target.scale_down["stabilizationWindowSeconds"])
        up_window = float(target.scale_up["stabilizationWindowSeconds"])
        stable_down = max(r for (rt, r) in recs if rt >= t - down_window)
        stable_up = min(r for (rt, r) in recs if rt >= t - up_window)
        if rec > current:
            new = min(stable_up, _policy_limit(target.scale_up, history, t, up=True))
            new = max(new, current)
        elif rec < current:
            new = max(stable_down, _policy_limit(target.scale_down, history, t, up=False))
            new = min(new, current)
        else:
            new = current
        new = min(max(new, target.min_replicas), target.max_replicas)
        current = new
        history.append((t, current))
        out.append(Step(t, dict(values), per, rec, current))
    return out


def table(target: ScaledTarget, steps: list[Step], t0: float) -> str:
    names = [tr.name for tr in target.triggers]
    head = f"{'t(s)':>6} " + " ".join(f"{n:>12}" for n in names) + f" {'formula':>8} {'replicas':>8}"
    lines = [f"{target.name}: min {target.min_replicas}, max {target.max_replicas}, " + ", ".join(
        f"{tr.name} {tr.metric_type} {tr.threshold:g}" for tr in target.triggers), head]  # fmt: skip
    for s in steps:
        vals = " ".join(f"{(s.values.get(n) or 0.0):>12.2f}" for n in names)
        lines.append(f"{s.t - t0:>6.0f} {vals} {s.recommendation:>8} {s.replicas:>8}")
    return "\n".join(lines)
