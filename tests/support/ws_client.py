"""A small test client over real WebSockets that records every frame per request id."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import websockets

_ids = itertools.count()


@dataclass
class Conn:
    url: str
    ws: Any = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    by_id: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    session: str | None = None
    last_seq: int = 0
    _reader: asyncio.Task[None] | None = None
    _waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None

    async def open(self, hello: dict[str, Any] | None = None, **kw: Any) -> Conn:
        self.ws = await websockets.connect(self.url, max_size=None, open_timeout=10, **kw)
        self.closed.clear()
        self._reader = asyncio.create_task(self._read())
        await self.send(hello or {"type": "hello"})
        await self.wait_for(lambda f: f["type"] == "welcome", 10)
        return self

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                f = json.loads(raw)
                self.frames.append(f)
                if f["type"] == "welcome":
                    self.session = f["session"]
                if f.get("seq") is not None:
                    self.last_seq = max(self.last_seq, f["seq"])
                if f.get("id") is not None:
                    self.by_id[f["id"]].append(f)
                    if f["type"] in ("result", "error"):
                        fut = self._waiters.pop(f["id"], None)
                        if fut is not None and not fut.done():
                            fut.set_result(f)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def infer(self, task: str, text: str, rid: str | None = None, **options: Any) -> str:
        rid = rid or f"r{next(_ids)}"
        frame: dict[str, Any] = {"type": "infer", "id": rid, "task": task, "input": text}
        if options:
            frame["options"] = options
        await self.send(frame)
        return rid

    async def final(self, rid: str, timeout: float = 15) -> dict[str, Any]:
        for f in self.by_id.get(rid, []):
            if f["type"] in ("result", "error"):
                return f
        fut = self._waiters.setdefault(rid, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(fut), timeout)

    async def call(self, task: str, text: str, timeout: float = 15, **options: Any) -> dict[str, Any]:
        return await self.final(await self.infer(task, text, **options), timeout)

    async def wait_for(self, pred: Any, timeout: float = 10) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        seen = 0
        while True:
            for f in self.frames[seen:]:
                if pred(f):
                    return f
            seen = len(self.frames)
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no matching frame; last frames: {self.frames[-5:]}")
            await asyncio.sleep(0.01)

    def finals(self, rid: str) -> list[dict[str, Any]]:
        return [f for f in self.by_id.get(rid, []) if f["type"] in ("result", "error")]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader
