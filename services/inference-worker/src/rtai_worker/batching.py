"""Turning a batch of jobs into model calls: sort by cost, cut where padding would waste work.

Transformers pay for the longest input in a batch; a 120-token text batched with five 10-token ones makes all six
cost 120. Sorting by length and cutting when a micro-batch's padding waste passes a threshold keeps the batching gain
without the padding loss.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_PADDING_WASTE = 0.5
"""Cut before an item if, with it, more than this fraction of the micro-batch's padded cost would be padding."""


def cut_by_length(costs: Sequence[int], max_waste: float = MAX_PADDING_WASTE) -> list[list[int]]:
    """Indices of `costs`, ordered by cost and grouped into micro-batches of similar cost."""
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        c = max(costs[i], 1)
        if current:
            padded = (len(current) + 1) * c  # sorted: the new item is the longest
            if (padded - (real + c)) / padded > max_waste:
                groups.append(current)
                current, real = [], 0
        current.append(i)
        real += c
    if current:
        groups.append(current)
    return groups
