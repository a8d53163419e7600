"""A minimal RFC 6455 client WebSocket as an asyncio Protocol, for the load generator.

No task, future or queue per message: each text message is handed to the owner's callback as it is parsed, so the
owner can write the next request from inside it. Masks are applied by websockets' C helper.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from typing import Protocol, cast

try:
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:  # pragma: no cover - a platform without the C helper
    from websockets.utils import apply_mask as _apply_mask

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsOwner(Protocol):
    """What a RawWebSocket reports to: each text message, and the close (with its code)."""

    def on_text(self, ws: RawWebSocket, payload: bytes) -> None: ...

    def on_close(self, ws: RawWebSocket, code: int) -> None: ...


class RawWebSocket(asyncio.Protocol):
    """One client WebSocket. Calls `owner.on_text(self, payload)` per text message, `owner.on_close(self, code)`."""

    def __init__(self, owner: WsOwner, host: bytes, path: bytes) -> None:
        self.owner = owner
        self.host = host
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.is_open = False
        self.closed = False
        self.buf = bytearray()
        self.frag = bytearray()
        self.index = 0
        self.counter = 0
        self.outstanding: dict[bytes, float] = {}
        self._accept = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.transport.write(
            b"GET " + self.path + b" HTTP/1.1\r\nHost: " + self.host + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed:
            self.closed = True
            self.owner.on_close(self, 1006)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.is_open and not self._handshake():
            return
        pos, n_buf = 0, len(buf)
        while n_buf - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if n_buf - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if n_buf - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if n_buf - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._frame(b0, payload)
        del buf[:pos]

    def _handshake(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buf[:end]).lower()
        del self.buf[: end + 4]
        if not head.startswith(b"http/1.1 101") or self._accept.lower() not in head:
            self.opened.set_exception(ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace")))
            assert self.transport is not None
            self.transport.close()
            return False
        self.is_open = True
        self.opened.set_result(None)
        return True

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode in (1, 2, 0):
            if not b0 & 0x80:
                self.frag += payload
                return
            if self.frag:
                payload, self.frag = bytes(self.frag + payload), bytearray()
            self.owner.on_text(self, payload)
        elif opcode == 9:
            self._send(0x8A, payload)
        elif opcode == 8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closed:
                self.closed = True
                self._send(0x88, payload[:2])
                self.owner.on_close(self, code)
            assert self.transport is not None
            self.transport.close()

    def _send(self, first: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((first, 0x80 | n))
        elif n < 65536:
            header = bytes((first, 0xFE)) + n.to_bytes(2, "big")
        else:
            header = bytes((first, 0xFF)) + n.to_bytes(8, "big")
        mask = random.getrandbits(32).to_bytes(4, "big")
        self.transport.write(header + mask + _apply_mask(payload, mask))

    def send_text(self, payload: bytes) -> None:
        self._send(0x81, payload)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._send(0x88, (1000).to_bytes(2, "big"))
