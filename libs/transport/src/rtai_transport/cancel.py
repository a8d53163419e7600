"""Cancellation that a library swallowed, caught where a service's background loops go round.

Python 3.11 counts a cancel request on the task (`Task.cancelling()`) and delivers it once, as CancelledError at the
next await. A call that catches it and goes on (seen in the Redis client, at shutdown, after the process had been
paused) consumes it: the task then loops for good, and the shutdown that waits for it hangs until the process is
killed. A loop that checks after each step stops as it was told.
"""

from __future__ import annotations

import asyncio


def stop_if_cancelled() -> None:
    """Raise CancelledError if the current task was told to stop (even if the step it just ran swallowed that)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
