"""Hand-packed commands (`rtai_transport.resp`) must be byte for byte what redis-py would send."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection

from rtai_transport import resp


def test_packs_as_redis_py_does() -> None:
    commands: list[resp.Command] = [
        ("MULTI",),
        ("XADD", "rtai:r:gw1", "MAXLEN", "~", 10_000, "*", "m", b'{"kind":"result","data":{"pos":0.5}}'),
        ("EXPIRE", "k\u00e9y", 3600),
        ("SET", "caf\u00e9 \u2603", b"\x00\r\n\xff", -7, 10**18),
        ("EXEC",),
    ]
    reference = Connection()
    assert resp.pack(commands) == b"".join(reference.pack_commands(commands))


@pytest.mark.parametrize("bad", [1.5, True, None])
def test_refuses_arguments_it_cannot_pack_faithfully(bad: object) -> None:
    with pytest.raises(TypeError, match="bytes, str or int"):
        resp.pack([("SET", "k", bad)])  # type: ignore[list-item]
