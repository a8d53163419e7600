"""prepare_heap_for_serving: garbage made at startup is freed, not frozen; what is alive is frozen; later objects are
not; generation 1 is collected less often."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from rtai_telemetry.heap import YOUNG_COLLECTIONS_PER_GEN1, prepare_heap_for_serving


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_startup_garbage_is_collected_and_live_objects_are_frozen() -> None:
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    frozen = prepare_heap_for_serving()
    assert gone() is None, "a cycle left over from startup must be collected, not frozen for the process's life"
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen objects are no longer tracked by collections
    later = Node()
    assert any(o is later for o in gc.get_objects())


def test_generation_1_is_collected_less_often_and_the_others_keep_their_thresholds() -> None:
    young, _, old = gc.get_threshold()
    prepare_heap_for_serving()
    assert gc.get_threshold() == (young, YOUNG_COLLECTIONS_PER_GEN1, old)
    # What that buys: a full collection is only considered every 10 generation-1 collections, and objects alive at a
    # generation-1 collection are promoted. With the same allocations, 10x fewer generation-1 collections run.
    gc.collect()
    before = gc.get_stats()[1]["collections"]
    keep = [[i] for i in range(200_000)]  # tracked containers kept alive: only allocations net of frees count
    assert len(keep) == 200_000
    assert gc.get_stats()[1]["collections"] - before <= 200_000 // (young * YOUNG_COLLECTIONS_PER_GEN1) + 1
