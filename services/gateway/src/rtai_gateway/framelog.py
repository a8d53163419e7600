"""The one path by which numbered frames are written to Redis, in order.

Every script that assigns a session sequence number (admitting a request, logging a worker's frame, the gateway's own
final frames) goes through this log and runs in pipelined batches. A session's scripts always take the same lane: one
queue and one connection, one batch at a time. Redis runs them in that order, so seq numbers come back in the order
we deliver them: a client sees a session's frames strictly in seq order, which is what makes "resume after the last
seq you saw" lose nothing. Batching also turns many clients' submissions into one round trip under load.

Order matters only within a session, so sessions can be spread over several lanes (`sessions.log_lanes`): at
saturation one lane was the gateway's slowest stage (busy ~70% of the time, every request waiting for it twice), and
lanes let one batch's round trip and Redis's work overlap another's parsing and delivery. The default is two: more
were slower again, and two cost no latency at half load (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from rtai_telemetry.logging import get_logger
from rtai_transport import Redis, RedisSettings, close_redis, create_redis, resp
from rtai_transport.cancel import stop_if_cancelled

log = get_logger("rtai_gateway.framelog")

MAX_BATCH = 512

Callback = Callable[[Any], None]
"""Called in the logger task, in order, with the script's result or the exception it raised."""


@dataclass(slots=True)
class _Op:
    session: str
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
        return self._lanes[self.lane_of(session_id)].submit(session_id, script, keys, args, then)

    def lane_of(self, session_id: str) -> int:
        return hash(session_id) % len(self._lanes)  # the same lane for the life of this process

    async def run(self) -> None:
        await asyncio.gather(*(lane.run() for lane in self._lanes))


class _Lane:
    def __init__(self, settings: RedisSettings, name: str | None) -> None:
        self._settings = settings
        self._name = name
        self._redis: Redis | None = None
        self._queue: asyncio.Queue[_Op] = asyncio.Queue()
        self._scripts: dict[str, AsyncScript] = {}
        """Every script this lane has run, loaded on each new connection before anything else is sent on it."""
        self._hooked: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()

    def submit(
        self, session: str, script: AsyncScript, keys: list[str], args: list[Any], then: Callback
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Op(session, script, keys, args, then, done))
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
                # The queued ops of the same sessions were submitted before this failure: run now, they could log a
                # session's later frame before its earlier one (a stream's chunk index the log then skips for good).
                # They fail with the batch, and their callers submit them again, in order.
                ops += self._take_queued({op.session for op in ops})
                results = [e] * len(ops)
            for op, res in zip(ops, results, strict=True):
                try:
                    op.then(res)
                except Exception:
                    log.exception("framelog.callback_failed")
                if not op.done.done():
                    op.done.set_result(None)
            stop_if_cancelled()

    def _take_queued(self, sessions: set[str]) -> list[_Op]:
        """Remove and return the queued ops of `sessions`; the others stay queued, in order."""
        queued = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
        for op in queued:
            if op.session not in sessions:
                self._queue.put_nowait(op)
        return [op for op in queued if op.session in sessions]

    async def _execute(self, ops: list[_Op]) -> list[Any]:
        assert self._redis is not None
        results = await self._pipeline(ops)
        # Scripts are loaded before every batch that needs them and on every new connection (`_ensure_scripts`), so
        # this is left for a SCRIPT FLUSH between two batches: those ops did not run; load and re-run them.
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            for script in {id(ops[i].script): ops[i].script for i in missing}.values():
                await self._redis.script_load(script.script)
            for i, r in zip(missing, await self._pipeline([ops[i] for i in missing]), strict=True):
                results[i] = r
        return results

    async def _pipeline(self, ops: list[_Op]) -> list[Any]:
        """Run a batch in one round trip on the lane's connection, retried on a fresh one as the client's other
        commands are (`rtai_transport.resp`: redis-py's Pipeline cost ~20% of the gateway's CPU here)."""
        assert self._redis is not None
        packed = pack_evalsha(ops)

        async def attempt(conn: AbstractConnection) -> list[Any]:
            await self._ensure_scripts(conn, ops)
            return await resp.round_trip(conn, packed, len(ops))

        return await resp.run(self._redis, attempt)

    async def _ensure_scripts(self, conn: AbstractConnection, ops: list[_Op]) -> None:
        """Make sure the server knows every script of the batch before it runs. A node that does not (a failover's
        new master never does) would answer NOSCRIPT to some ops and run others, and the ones re-run after loading
        would take their session's seq numbers out of order: the socket then drops the frame whose number is lower
        than one already sent (a lost result, seen in the failover chaos test)."""
        if conn not in self._hooked:
            conn.register_connect_callback(self._load_all)  # type: ignore[no-untyped-call] # on every reconnect
            self._hooked.add(conn)
        new = {op.script.sha: op.script for op in ops if op.script.sha not in self._scripts}
        if new:
            await _load(conn, list(new.values()))
            self._scripts.update(new)

    async def _load_all(self, conn: AbstractConnection) -> None:
        await _load(conn, list(self._scripts.values()))


async def _load(conn: AbstractConnection, scripts: list[AsyncScript]) -> None:
    for script in scripts:
        await conn.send_command("SCRIPT", "LOAD", script.script)
        await conn.read_response()


def pack_evalsha(ops: list[_Op]) -> bytes:
    """The batch's EVALSHA commands in RESP."""
    return resp.pack((b"EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args) for op in ops)
