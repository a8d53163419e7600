"""A streaming request as the caller iterates it."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from rtai_client._calls import Call
from rtai_protocol import Chunk, Result

if TYPE_CHECKING:
    from rtai_client.client import Client


class Stream:
    """A streaming request. Iterate once for its chunks; `.result` is set when the iteration ends normally."""

    def __init__(self, client: Client, call: Call, timeout: float, retries: int) -> None:
        self._client = client
        self._call = call
        self._timeout = timeout
        self._retries = retries
        self._started = False
        # A Stream dropped without being iterated never reached the server: its id is freed with it, instead of
        # staying reserved in the client for good.
        weakref.finalize(self, client._forget_unstarted, call)

    @property
    def id(self) -> str:
        return self._call.id

    @property
    def result(self) -> Result | None:
        return self._call.result

    async def __aiter__(self) -> AsyncIterator[Chunk]:
        if self._started:
            raise RuntimeError("a Stream can be iterated only once")
        self._started = True
        try:
            async for chunk in self._client._drive(self._call, self._timeout, self._retries):
                yield chunk
        finally:
            self._client._abandon(self._call)

    async def cancel(self) -> None:
        await self._client.cancel(self._call.id)
