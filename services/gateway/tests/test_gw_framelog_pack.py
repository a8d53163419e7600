"""The frame log packs its EVALSHA batches itself (redis-py's Pipeline cost too much CPU per command): the bytes must
be exactly what redis-py would send, for every kind of argument the gateway's scripts take."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio.connection import Connection

from rtai_gateway.framelog import _Op, pack_evalsha


class _Script:
    sha = "0123456789abcdef0123456789abcdef01234567"


def _op(keys: list[str], args: list[Any]) -> _Op:
    return _Op("s", _Script(), keys, args, lambda _res: None, asyncio.Future())  # type: ignore[arg-type]


async def test_packs_as_redis_py_does() -> None:
    ops = [
        _op(["rtai:s:abc:seq", "rtai:s:abc:log"], [b'{"type":"result","id":"r1"}', "final", 0, 600, 2000, "r1", 0]),
        _op(["k\u00e9y"], ["caf\u00e9 \u2603", b"\x00\r\n\xff", -7, 10**18]),
        _op([], []),
    ]
    reference = Connection()
    expected = b"".join(
        b"".join(reference.pack_command("EVALSHA", op.script.sha, len(op.keys), *op.keys, *op.args)) for op in ops
    )
    assert pack_evalsha(ops) == expected


@pytest.mark.parametrize("bad", [1.5, True, None])
async def test_refuses_arguments_it_cannot_pack_faithfully(bad: object) -> None:
    with pytest.raises(TypeError, match="bytes, str or int"):
        pack_evalsha([_op(["k"], [bad])])
