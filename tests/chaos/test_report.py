"""The chaos report's own arithmetic, on made-up records (no servers): what "recovered after" counts from."""

from __future__ import annotations

import pytest

from tests.support.chaos import LoadDriver, Record

OK = {"type": "result"}
REFUSED = {"type": "error", "code": "unavailable"}


def _outage() -> LoadDriver:
    """100 requests/s: the first 30 after the fault beat the shutdown to Redis, the outage refuses everything for
    10 s, and from 0.5 s after the restart (at t=10) every request succeeds again."""
    driver = LoadDriver(urls=[])
    t = 0.0
    for i in range(1150):
        t = i / 100
        ok = t < 0.3 or t >= 10.5
        driver.records[f"q{i}"] = Record(f"q{i}", t, [OK if ok else REFUSED], t + 0.002)
    return driver


def test_recovery_is_counted_from_the_end_of_a_lasting_fault() -> None:
    report = _outage().report("outage", fault_at=0.0, fault_end=10.0)
    # The 20th success in a row sent after the restart: the one sent at 10.5 + 19 * 0.01.
    assert report["recover_s"] == pytest.approx(0.69, abs=0.01)


def test_counted_from_the_fault_start_the_outage_would_look_recovered_at_once() -> None:
    # Why `fault_end` exists: the requests that beat the shutdown make a streak of 20 before the outage bites.
    report = _outage().report("outage", fault_at=0.0)
    assert report["recover_s"] == pytest.approx(0.19, abs=0.01)


def test_an_instant_fault_recovers_from_its_own_moment() -> None:
    driver = LoadDriver(urls=[])
    for i in range(100):
        t = i / 100
        driver.records[f"q{i}"] = Record(f"q{i}", t, [OK if t >= 0.4 else REFUSED], t + 0.002)
    assert driver.report("kill", fault_at=0.2)["recover_s"] == pytest.approx(0.39, abs=0.01)
