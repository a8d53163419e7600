"""Waiting in async tests for a condition another process brings about."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `pred` every 0.1 s until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)
