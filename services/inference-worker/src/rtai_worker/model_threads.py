"""The threads a task's model runs in, and which of their calls are still running.

A Python thread cannot be stopped. A batch cut off at shutdown goes on computing in its thread while its jobs are
handed back to other workers, and the interpreter would wait for it on the way out (asyncio's default executor is
joined when the loop closes, and every executor thread at exit). A batch longer than the grace period would then hold
the process (and its pod) past it. With the calls counted here, the worker knows there is nothing left worth waiting
for and leaves without joining them (`rtai_worker.__main__`).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ModelThreads:
    def __init__(self, name: str, size: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        self._calls: set[Future[Any]] = set()
        self.closed = False

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in one of the threads, with the caller's context (as `asyncio.to_thread`)."""
        ctx = contextvars.copy_context()

        def in_context() -> T:
            return ctx.run(fn, *args, **kwargs)

        call = self._pool.submit(in_context)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return await asyncio.wrap_future(call)

    def running(self) -> int:
        """Calls still running: a cancelled await does not stop its thread."""
        return sum(1 for call in list(self._calls) if not call.done())

    def close(self) -> None:
        """No new calls; idle threads end. A call still running goes on until it returns."""
        self.closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
