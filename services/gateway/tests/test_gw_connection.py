"""A socket's send queue: frames go out in order, then the close frame; a client too slow to keep up is closed with
1013 at once, without waiting for the frames it is not reading, and never with a gap below the last frame it got
(no Redis, no server: a WebSocket stand-in whose sends block until the test lets them through)."""

from __future__ import annotations

import asyncio

from starlette.websockets import WebSocketState

from rtai_gateway.connection import WS_1013_TRY_AGAIN_LATER, Connection
from rtai_gateway.ws_protocol import SEND_TEXT_NOW


class StalledSocket:
    """Records what is sent; a frame's send completes only while `writable` is set (as uvicorn's waits for the
    transport to drain). Close frames do not wait, as the gateway's WebSocket protocol writes them at once."""

    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.client_state = WebSocketState.CONNECTED
        self.writable = asyncio.Event()
        self.sent: list[str] = []
        self.closed_with: tuple[int, str] | None = None
        self.scope: dict[str, object] = {"extensions": {}}

    async def send_text(self, text: str) -> None:
        await self.writable.wait()
        self.sent.append(text)

    async def close(self, code: int, reason: str = "") -> None:
        self.application_state = WebSocketState.DISCONNECTED
        self.closed_with = (code, reason)


class DirectSocket(StalledSocket):
    """Also offers the gateway protocol's `send_text_now`: it writes at once while `writable` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.scope = {"extensions": {SEND_TEXT_NOW: self.send_text_now}}
        self.direct = 0

    def send_text_now(self, data: bytes) -> bool:
        if not self.writable.is_set():
            return False
        self.direct += 1
        self.sent.append(data.decode())
        return True


def connection(ws: StalledSocket, frames: int) -> Connection:
    return Connection(ws, frames)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_frames_go_out_in_order_then_the_close_frame() -> None:
    ws = StalledSocket()
    ws.writable.set()
    conn = connection(ws, 8)
    for i in range(5):
        assert conn.offer(b"f%d" % i)
    conn.close(1000, "bye")
    await conn.aclose()
    assert ws.sent == [f"f{i}" for i in range(5)]
    assert ws.closed_with == (1000, "bye")


async def test_a_client_too_slow_is_closed_1013_at_once_and_its_queue_dropped() -> None:
    ws = StalledSocket()
    slow_closes: list[int] = []
    conn = Connection(ws, 8, on_slow_close=lambda: slow_closes.append(1))  # type: ignore[arg-type]
    offered = 0
    while conn.offer(b"f%d" % offered):
        offered += 1
        await settle()  # the writer takes the first frame and stalls on it
    assert offered == 9  # one frame in the stalled send, eight queued
    await settle()
    # The close frame did not wait for the client to read what was queued, and nothing of it was sent.
    assert ws.closed_with is not None and ws.closed_with[0] == WS_1013_TRY_AGAIN_LATER
    assert ws.sent == []
    assert conn.queued == 0
    assert slow_closes == [1]
    assert not conn.offer(b"late")
    ws.writable.set()  # the client reads at last: the frame whose send was cancelled is not sent after the close
    await conn.aclose()
    assert ws.sent == []


async def test_a_close_on_a_full_queue_drops_it_whole_rather_than_leave_a_gap() -> None:
    ws = StalledSocket()
    conn = connection(ws, 8)
    for i in range(9):
        assert conn.offer(b"f%d" % i)
        await settle()
    conn.close(1012, "restarting")  # no room for the close marker behind the queue
    await settle()
    assert ws.closed_with == (1012, "restarting")
    ws.writable.set()
    await conn.aclose()
    # The client resumes from the last frame it got; frames after a dropped one would hide that frame from it.
    assert ws.sent == []


async def test_frames_go_out_at_once_while_the_socket_takes_them_and_queue_in_order_when_it_does_not() -> None:
    ws = DirectSocket()
    ws.writable.set()
    conn = connection(ws, 8)
    assert conn.offer(b"f0") and conn.offer(b"f1")
    assert ws.sent == ["f0", "f1"] and ws.direct == 2  # written from the caller's stack
    assert conn._writer is None  # no writer task until a frame has to wait
    ws.writable.clear()  # the client stopped reading: the transport is above its high-water mark
    assert conn.offer(b"f2") and conn.offer(b"f3")
    assert conn.queued == 2
    ws.writable.set()  # the client reads again
    assert conn.offer(b"f4")  # behind the two queued frames, not ahead of them
    await settle()
    assert ws.sent == ["f0", "f1", "f2", "f3", "f4"]
    assert ws.direct == 2
    assert conn.offer(b"f5")  # the queue is drained: at once again
    assert ws.sent[-1] == "f5" and ws.direct == 3
    conn.close(1000, "bye")
    await conn.aclose()
    assert ws.closed_with == (1000, "bye")
