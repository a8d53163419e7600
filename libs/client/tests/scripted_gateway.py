"""A scripted gateway for the SDK's and the CLI's tests: a real WebSocket server on loopback that plays a test's
script, one connection at a time, speaking the protocol's frames. The `scripted` fixture (conftest.py) starts them.

A script's failure (an assert about what the client sent, say) happens in the server's connection handler, where
websockets only logs it: the handler keeps it, and the fixture raises it at teardown, so the test fails."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One connection as the script sees it: frames received are recorded on the server for the test to inspect."""

    def __init__(self, ws: ServerConnection, server: Scripted, n: int) -> None:
        self.ws = ws
        self.server = server
        self.n = n
        """0 for the first connection, 1 for the first reconnect, ..."""

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.ws.recv())
        self.server.received.append((self.n, frame))
        return frame

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def welcome(self, resumed: bool = False) -> dict[str, Any]:
        hello = await self.recv()
        assert hello["type"] == "hello"
        await self.send({"type": "welcome", "session": "s1", "resumed": resumed, "gateway": "g1", "protocol": "1"})
        return hello

    async def accept(self, infer: dict[str, Any], seq: int = 1) -> None:
        await self.send({"type": "accepted", "id": infer["id"], "seq": seq, "task": "t", "deadline_ms": 0})

    async def accept_then_restart(self) -> None:
        """Welcome, accept the first request, then close as a restarting gateway does (1012)."""
        await self.welcome()
        await self.accept(await self.recv())
        await self.ws.close(1012, "restart")

    async def drain(self) -> None:
        """Record what the client sends until it goes away."""
        try:
            while True:
                await self.recv()
        except Exception:
            return


class Scripted:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.received: list[tuple[int, dict[str, Any]]] = []
        self.connections = 0
        self.server: Server | None = None
        self.failures: list[BaseException] = []
        """What the script raised, other than the client going away."""

    async def _handle(self, ws: ServerConnection) -> None:
        n = self.connections
        self.connections += 1
        try:
            await self.script(Peer(ws, self, n))
        except ConnectionClosed:
            pass  # the client went away while the script waited for a frame: how a script's loop ends
        except Exception as e:
            self.failures.append(e)
            raise

    def check(self) -> None:
        """Raise the script's first failure, if any."""
        if self.failures:
            raise self.failures[0]

    @property
    def url(self) -> str:
        assert self.server is not None
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/ws"

    def sent(self, kind: str, conn: int | None = None) -> list[dict[str, Any]]:
        """The frames of type `kind` the client sent (on connection `conn` only, if given)."""
        return [f for n, f in self.received if f["type"] == kind and (conn is None or n == conn)]


async def welcome_then_listen(peer: Peer) -> None:
    """A gateway that welcomes the client and only records what it sends."""
    await peer.welcome()
    await peer.drain()


def refusal(rid: str | None, code: str, retry_after_ms: int | None) -> dict[str, Any]:
    return {"type": "error", "id": rid, "seq": None, "code": code, "message": code, "retry_after_ms": retry_after_ms}
