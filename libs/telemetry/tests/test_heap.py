"""freeze_startup_heap: garbage made at startup is freed, not frozen; what is alive is frozen; later objects are not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from rtai_telemetry.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_startup_garbage_is_collected_and_live_objects_are_frozen() -> None:
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    kept = Node()
    frozen = freeze_startup_heap()
    assert gone() is None, "a cycle left over from startup must be collected, not frozen for the process's life"
    assert frozen == gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # frozen objects are no longer tracked by collections
    later = Node()
    assert any(o is later for o in gc.get_objects())
