"""The gateway's background loops stop when the lifespan cancels them, even if a step swallowed the cancellation
(the lifespan's clean-up waits for them)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rtai_gateway.loops import _forever


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
async def test_a_loop_whose_step_swallows_its_cancellation_still_stops(fails: bool) -> None:
    async def step() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # a Redis call on its way out, say
            await asyncio.sleep(10)
        if fails:
            raise ConnectionError("and then it failed")

    task = asyncio.create_task(_forever("test", step, 0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
