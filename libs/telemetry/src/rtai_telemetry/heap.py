"""The garbage collector and a long-running service: keep full collections rare and short.

A service imports FastAPI, pydantic, redis, OpenTelemetry, models...: 60,000-90,000 objects the cyclic collector
tracks and never frees. Each full (generation 2) collection walks all of them: 45-55 ms on the gateway on a 2-core VM,
every ~6 s under load, with every request in flight waiting. `gc.freeze()` moves them into a permanent generation that
collections skip: full collections under the same load take 3-5 ms (docs/performance.md has the side-by-side runs).

A gateway holding many sockets has a large live heap that cannot be frozen (~100 tracked objects per socket: 1 million
at 10,000 sockets), and CPython 3.11 runs a full collection whenever the objects promoted into the oldest generation
since the last one reach 25% of it. Promotion happens at every generation-1 collection, to whatever is alive at that
instant, so under load the requests in flight are promoted by the thousand and a full collection follows every few
seconds: while 10,000 sockets connected, 13 of them paused the gateway 3.3 s in all (up to 0.66 s each). Collecting
generation 1 ten times less often (after 100 young collections instead of 10) promotes ten times fewer passing
objects: 2 full collections, 0.48 s in all. Cycles that die young are still freed by the young collections.
"""

from __future__ import annotations

import gc

YOUNG_COLLECTIONS_PER_GEN1 = 100
"""Generation-0 collections between two generation-1 collections (CPython's default: 10)."""


def prepare_heap_for_serving() -> int:
    """Collect what startup left as garbage, freeze everything still alive, and promote less often. Call once, when
    the service is built and before it serves. Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    young, _, old = gc.get_threshold()
    gc.set_threshold(young, YOUNG_COLLECTIONS_PER_GEN1, old)
    return gc.get_freeze_count()
