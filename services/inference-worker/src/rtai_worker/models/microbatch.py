"""Length-aware cutting of a batch into micro-batches.

A transformer pads every input of a batch to the longest one, so one 120-token text in a batch of 10-token texts
makes the whole batch cost 120 tokens per row. Sorting by length and cutting where padding would waste too much
keeps the batching gain without paying for the padding.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MAX_WASTE = 0.3
"""Largest share of padded positions a micro-batch may have (0.3: at least 70% of the computed tokens are real)."""


def padding_waste(keys: Sequence[int]) -> float:
    """Share of positions that would be padding if `keys` (lengths) were padded to the longest."""
    if not keys:
        return 0.0
    longest = max(keys)
    if longest <= 0:
        return 0.0
    return 1.0 - sum(keys) / (longest * len(keys))


def cut_by_length(
    keys: Sequence[int], max_waste: float = DEFAULT_MAX_WASTE, max_size: int | None = None
) -> list[list[int]]:
    """Group the indices of `keys` (cost estimates such as token counts) into micro-batches.

    Indices are sorted by key (stable, so equal keys keep their order) and a new micro-batch starts when adding the
    next, longer input would push the padding waste above `max_waste`, or when a micro-batch holds `max_size`
    inputs. Every index appears exactly once. Pure function: no model, no I/O.

    >>> cut_by_length([10, 10, 120, 10, 10, 10])
    [[0, 1, 3, 4, 5], [2]]
    """
    if not 0.0 <= max_waste < 1.0:
        raise ValueError(f"max_waste must be in [0, 1), got {max_waste}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    groups: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i in order:
        key = max(keys[i], 0)
        if current:
            # Sorted ascending: the newcomer is the longest, so the padded size is key * (n + 1).
            n = len(current) + 1
            waste = 1.0 - (total + key) / (key * n) if key > 0 else 0.0
            if waste > max_waste or (max_size is not None and len(current) >= max_size):
                groups.append(current)
                current, total = [], 0
        current.append(i)
        total += key
    if current:
        groups.append(current)
    return groups
