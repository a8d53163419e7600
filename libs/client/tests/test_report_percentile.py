"""Percentiles by nearest rank, checked against the definition computed in exact arithmetic."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rtai_client.report import latency_summary, percentile

PS = (0.0, 0.1, 1.0, 10.0, 25.0, 33.3, 50.0, 66.7, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0)


def _brute_rank(n: int, p: float) -> int:
    """The smallest rank r with r / n >= p / 100, p at its decimal value, by trying every rank."""
    want = Fraction(repr(p)) / 100
    return next((r for r in range(1, n + 1) if Fraction(r, n) >= want), n)


def test_p99_9_of_a_thousand_samples_is_the_999th() -> None:
    # In floats 99.9 / 100 * 1000 is 999.0000000000001, whose ceiling made it the maximum.
    assert percentile(range(1, 1001), 99.9) == 999
    assert percentile(range(1, 2001), 99.9) == 1998
    assert latency_summary(float(x) for x in range(1, 1001))["p99.9"] == 999


@pytest.mark.parametrize("p", PS)
def test_percentile_matches_the_nearest_rank_definition(p: float) -> None:
    for n in (*range(1, 1100), 2000, 3000, 5000, 10_000):
        samples = range(1, n + 1)
        assert percentile(samples, p) == _brute_rank(n, p), (n, p)


def test_no_samples_give_zero() -> None:
    assert percentile([], 99.0) == 0.0
