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


async def test_a_loop_nobody_cancelled_goes_on_beside_one_that_was() -> None:
    """The check reads the task it runs in: a cancel of another task, or of none, stops nothing."""
    steps = {"kept": 0, "stopped": 0}

    async def loop(name: str) -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):  # every step swallows a cancel, as above
                await asyncio.sleep(0.005)
            stop_if_cancelled()
            steps[name] += 1
            if steps[name] == 40:
                return

    kept = asyncio.create_task(loop("kept"))
    stopped = asyncio.create_task(loop("stopped"))
    await asyncio.sleep(0.02)
    stopped.cancel()
    await asyncio.wait_for(kept, 5)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(stopped, 2)
    assert steps["kept"] == 40
    assert steps["stopped"] < 40
    assert kept.cancelling() == 0
    stop_if_cancelled()  # and in a task nobody cancelled (this test's), nothing is raised
