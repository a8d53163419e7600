"""The one path by which numbered frames are written to Redis, in order.

Every script that assigns a session sequence number (admitting a request, logging a worker's frame, the gateway's own
final frames) goes through this log and runs in pipelined batches. A session's scripts always take the same lane: one
queue and one connection, one batch at a time. Redis runs them in that order, so seq numbers come back in the order
we deliver them: a client sees a session's frames strictly in seq order, which is what makes "resume after the last
seq you saw" lose nothing. Batching also turns many clients' submissions into one round trip under load.

Order matters only within a session, so sessions are spread over several lanes: under load one lane was the
gateway's slowest stage (busy ~70% of the time, every request waiting for it twice), and lanes let one batch's
round trip and Redis's work overlap another's parsing and delivery (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from rtai_telemetry.logging import get_logger
from rtai_transport import Redis, RedisSettings, close_redis, create_redis

log = get_logger("rtai_gateway.framelog")

MAX_BATCH = 512

Callback = Callable[[Any], None]
"""Called in the logger task, in order, with the script's result or the exception it raised."""


@dataclass(slots=True)
class _Op:
    script: AsyncScript
    keys: list[str]
    args: list[Any]
    then: Callback
    done: asyncio.Future[None]


class FrameLog:
    def __init__(self, settings: RedisSettings, *, lanes: int = 1, name: str | None = None) -> None:
        self._lanes = [_Lane(settings, name) for _ in range(lanes)]

    def submit(
        self, session_id: str, script: AsyncScript, keys: list[str], args: list[Any], then: Callback
    ) -> asyncio.Future[None]:
        """Queue a script run for a session; `then` receives its result, in order with the session's other scripts.
        The future resolves after `then` ran."""
        lanes = self._lanes
        lane = lanes[hash(session_id) % len(lanes)] if len(lanes) > 1 else lanes[0]
        return lane.submit(script, keys, args, then)

    async def run(self) -> None:
        await asyncio.gather(*(lane.run() for lane in self._lanes))


class _Lane:
    def __init__(self, settings: RedisSettings, name: str | None) -> None:
        self._settings = settings
        self._name = name
        self._redis: Redis | None = None
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()

    def submit(self, script: AsyncScript, keys: list[str], args: list[Any], then: Callback) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(script, keys, args, then, done))
        return done

    async def run(self) -> None:
        # Its own client, retrying once: one batch stuck in redis-py's nested connect retries during a failover
        # would hold every request behind it. Failing fast answers `unavailable` (clients retry) and the reply
        # reader reads again; nothing is lost either way.
        self._redis = create_redis(self._settings, retries=1, name=self._name)
        try:
            await self._loop()
        finally:
            await close_redis(self._redis)

    async def _loop(self) -> None:
        while True:
            ops = [await self._queue.get()]
            while len(ops) < MAX_BATCH and not self._queue.empty():
                ops.append(self._queue.get_nowait())
            try:
                results = await self._execute(ops)
            except asyncio.CancelledError:
                for op in ops:
                    op.done.cancel()
                raise
            except Exception as e:
                results = [e] * len(ops)
            for op, res in zip(ops, results, strict=True):
                try:
                    op.then(res)
                except Exception:
                    log.exception("framelog.callback_failed")
                if not op.done.done():
                    op.done.set_result(None)

    async def _execute(self, ops: list[_Op]) -> list[Any]:
        assert self._redis is not None
        results = await self._pipeline(ops)
        # After a failover or restart the node may not know our scripts: those ops did not run; load and re-run them.
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for script in {id(ops[i].script): ops[i].script for i in missing}.values():
                await self._redis.script_load(script.script)
            for i, r in zip(missing, await self._pipeline([ops[i] for i in missing]), strict=True):
                results[i] = r
        return results

    async def _pipeline(self, ops: list[_Op]) -> list[Any]:
        assert self._redis is not None
        # EVALSHA directly rather than Script objects in a pipeline: those add a SCRIPT EXISTS round trip per batch.
        async with self._redis.pipeline(transaction=False) as pipe:
            for op in ops:
                pipe.evalsha(op.script.sha, len(op.keys), *op.keys, *op.args)
            return list(await pipe.execute(raise_on_error=False))
