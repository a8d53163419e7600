"""The garbage collector and a long-running service: keep full collections rare and short.

A service imports FastAPI, pydantic, redis, OpenTelemetry, models...: 60,000-90,000 objects the cyclic collector
tracks and never frees. Each full (generation 2) collection walks all of them: 45-55 ms on the gateway on a 2-core VM,
every ~6 s under load, with every request in flight waiting. `gc.freeze()` moves them into a permanent generation that
collections skip: full collections under the same load take 3-5 ms (docs/performance.md has the side-by-side runs).

A gateway holding many sockets has a large live heap that cannot be frozen (~100 tracked objects per socket: 1 million
at 10,000 sockets). CPython 3.11 considers a full collection after every 10 generation-1 collections and runs it when
the objects promoted into the oldest generation since the last one reach 25% of it, which a growing heap meets over
and over: while 10,000 sockets connected under load, 13 full collections paused the gateway 3.3 s in all (up to
0.66 s each), every request waiting. Collecting generation 1 after 100 young collections instead of 10 lets a full
collection come at most every ~700,000 net allocations of tracked objects instead of ~70,000, and promotes fewer
passing objects (requests in flight): 2 full collections in the same storm, 0.48 s in all. Cycles that die young are
still freed by the young collections; those that reach generation 1 wait longer for it.
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
