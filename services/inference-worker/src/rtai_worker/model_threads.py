"""Model calls off the event loop, counted while they run.

A Python thread cannot be stopped. A batch cut off at shutdown goes on computing in its thread while its jobs are
handed back to other workers, and the interpreter would wait for it on the way out (asyncio's default executor is
joined when the loop closes, and every executor thread at exit). A batch longer than the grace period would then hold
the process (and its pod) past it. With the calls counted here, the worker knows there is nothing left worth waiting
for and leaves without joining them (`rtai_worker.__main__`).

The calls run in asyncio's default executor, as `asyncio.to_thread` runs them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ModelThreads:
    def __init__(self) -> None:
        self._running = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a thread, with the caller's context (`asyncio.to_thread`)."""

        def counted() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(-1)

        # Counted from the hand-off; the thread uncounts it when done, even after its caller was cancelled. (One
        # cancelled before a thread took it never runs and stays counted: the worker then leaves without closing its
        # loop, which skips nothing it needs.)
        self._add(1)
        return await asyncio.to_thread(counted)

    def running(self) -> int:
        """Calls handed to a thread and not finished: a cancelled await does not stop its thread."""
        with self._lock:
            return self._running

    def _add(self, n: int) -> None:
        with self._lock:
            self._running += n
