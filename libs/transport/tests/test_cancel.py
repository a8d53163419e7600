"""A background loop stops when told, even if a call inside it swallowed the cancellation."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rtai_transport.cancel import stop_if_cancelled


async def test_a_loop_whose_step_swallows_its_cancellation_still_stops() -> None:
    async def swallowing_step() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as a client library can, on its way out of a call
            await asyncio.sleep(10)

    async def loop() -> None:
        while True:
            await swallowing_step()
            stop_if_cancelled()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert task.cancelled()


async def test_nothing_happens_to_a_task_nobody_cancelled() -> None:
    stop_if_cancelled()
