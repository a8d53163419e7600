from __future__ import annotations

import pytest

from rtai_worker.models.microbatch import cut_by_length, padding_waste


def test_five_short_inputs_and_one_long_make_two_micro_batches() -> None:
    keys = [10, 10, 10, 120, 10, 10]
    assert cut_by_length(keys) == [[0, 1, 2, 4, 5], [3]]


def test_similar_lengths_stay_together_and_every_index_appears_once() -> None:
    keys = [12, 9, 11, 10, 13, 40, 44, 41]
    groups = cut_by_length(keys)
    assert sorted(i for g in groups for i in g) == list(range(len(keys)))
    assert groups == [[1, 3, 2, 0, 4], [5, 7, 6]]
    assert all(padding_waste([keys[i] for i in g]) <= 0.3 for g in groups)


def test_max_size_caps_a_micro_batch() -> None:
    assert cut_by_length([5] * 5, max_size=2) == [[0, 1], [2, 3], [4]]


def test_edge_cases() -> None:
    assert cut_by_length([]) == []
    assert cut_by_length([0, 0, 3]) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="max_waste"):
        cut_by_length([1], max_waste=1.0)
