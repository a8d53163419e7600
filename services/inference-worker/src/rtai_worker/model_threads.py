"""Model calls off the event loop, counted while they run.

A Python thread cannot be stopped. A batch cut off at shutdown goes on computing in its thread while its jobs are
handed back to other workers, and the interpreter would wait for it on the way out (asyncio's default executor is
joined when the loop closes, and every executor thread at exit). A batch longer than the grace period would then hold
the process (and its pod) past it. With the calls counted here, the worker knows there is nothing left worth waiting
for and leaves without joining them (`rtai_worker.__main__`).

A call that runs `hung_after_s` past its time limit is taken as hung (a deadlock in native code, a model waiting on
something that never comes): its caller gets `ModelCallHung` and the worker is told, so it can hand the jobs back and
leave rather than keep claims fresh on work that will never finish, wedging the task (`Worker._model_hung`). A call's
limit is the moment it may legitimately run to (`run_until`: a batch of generations runs to its requests' deadlines),
else its start.

The calls run in asyncio's default executor, as `asyncio.to_thread` runs them.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ModelCallHung(Exception):
    """A model call ran past its time limit; it goes on in its thread, which nothing can stop."""


class ModelThreads:
    def __init__(self, task: str, hung_after_s: float, on_hung: Callable[[ModelCallHung], None]) -> None:
        self._task = task
        self._hung_after_s = hung_after_s
        self._on_hung = on_hung
        self._running = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` in a thread, with the caller's context (as `asyncio.to_thread`). Raises
        `ModelCallHung`, after telling `on_hung`, if it is not done within `hung_after_s`."""
        return await self.run_until(0.0, fn, *args, **kwargs)

    async def run_until(self, may_run_s: float, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """As `run`, for a call that may legitimately take `may_run_s`: it is hung `hung_after_s` after that."""

        def counted() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(-1)

        # Counted from the hand-off; the thread uncounts it when done, even after its caller was cancelled. (One
        # cancelled before a thread took it never runs and stays counted: the worker then leaves without closing its
        # loop, which skips nothing it needs.)
        self._add(1)
        # run_in_executor's future, awaited under a timeout, rather than wait_for(to_thread(...)): no task per call.
        call = functools.partial(contextvars.copy_context().run, counted)
        future = asyncio.get_running_loop().run_in_executor(None, call)
        limit = max(may_run_s, 0.0) + self._hung_after_s
        timer = asyncio.timeout(limit)
        try:
            async with timer:
                return await future
        except TimeoutError:
            if not timer.expired():
                raise  # the model's own TimeoutError (a backend it calls timed out): an error of this call, not a hang
            name = getattr(fn, "__qualname__", fn)
            hung = ModelCallHung(f"a {self._task} model call ({name}) has run for over {limit:g} s")
            self._on_hung(hung)
            raise hung from None

    def running(self) -> int:
        """Calls handed to a thread and not finished: a cancelled await does not stop its thread."""
        with self._lock:
            return self._running

    def _add(self, n: int) -> None:
        with self._lock:
            self._running += n
