"""The HPA algorithm as tests/deploy/hpa_sim.py models it (KEDA's threshold semantics, scale-down window and policy),
checked on readings made up here: the live proof (test_autoscaling_live.py) replays real readings through it."""

from __future__ import annotations

from typing import Any

from tests.deploy.hpa_sim import ScaledTarget, Trigger, simulate


def _target(*triggers: Trigger, lo: int = 1, hi: int = 4, down: dict[str, Any] | None = None) -> ScaledTarget:
    return ScaledTarget("t", lo, hi, triggers, scale_down=down or {"stabilizationWindowSeconds": 0, "policies": [
        {"type": "Percent", "value": 100, "periodSeconds": 15}]})  # fmt: skip


def test_hpa_formula_with_keda_threshold_semantics() -> None:
    backlog = Trigger("backlog", "q", "AverageValue", 20)
    age = Trigger("age", "q", "Value", 5)
    assert backlog.desired(100, 1) == 5  # ceil(total / per-replica target)
    assert backlog.desired(100, 3) == 5  # independent of the current count
    assert backlog.desired(21, 1) == 1  # ratio 1.05: within the 10 % tolerance
    assert backlog.desired(None, 2) == 0  # ignoreNullValues: empty result = 0
    assert age.desired(7.5, 2) == 3  # ceil(current * value / target)
    steps = simulate(_target(backlog, age), [(0, {"backlog": 100, "age": 0}), (1, {"backlog": 0, "age": 0})])
    assert [s.replicas for s in steps] == [4, 1]  # bounded by max, back to min without a stabilization window
    # KEDA with minReplicaCount 0: zero at or below the activation threshold, at least one above it
    scale_to_zero = _target(Trigger("b", "q", "AverageValue", 20, activation=5), lo=0)
    steps = simulate(scale_to_zero, [(0, {"b": 5}), (1, {"b": 6}), (2, {"b": 0})], start_replicas=0)
    assert [s.replicas for s in steps] == [0, 1, 0]


def test_hpa_scale_down_window_and_policy() -> None:
    slow = {"stabilizationWindowSeconds": 100, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
    target = _target(Trigger("c", "q", "AverageValue", 10), down=slow)
    readings: list[tuple[float, dict[str, float | None]]] = [(0, {"c": 40})]
    readings += [(t, {"c": 0}) for t in range(15, 400, 15)]
    changes = [(s.t, s.replicas) for s in simulate(target, readings)]
    assert changes[0][1] == 4
    assert [r for t, r in changes if t < 100] == [4] * 7  # held for the stabilization window
    down = [t for (t, r), (_, prev) in zip(changes[1:], changes, strict=False) if r < prev]
    assert down == [105, 165, 225]  # then one pod per 60 s
