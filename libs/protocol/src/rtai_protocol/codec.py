"""JSON encoding and decoding of every wire message. One module-level TypeAdapter per wire."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from rtai_protocol.client import ClientFrame, ServerFrame
from rtai_protocol.errors import ErrorCode, ProtocolError
from rtai_protocol.internal import SUPPORTED_VERSIONS, Forward, Job, Reply

CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
SERVER_FRAME: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
INTERNAL_MESSAGE: TypeAdapter[Job | Reply | Forward] = TypeAdapter(Job | Reply | Forward)

DEFAULT_MAX_DEPTH = 32


def encode(model: BaseModel) -> bytes:
    """Compact JSON; None-valued optional fields are left out to keep frames small."""
    return orjson.dumps(model.model_dump(mode="json", exclude_none=True))


def with_seq(body: bytes, seq: int) -> bytes:
    """Put `"seq": N` first into an encoded JSON object (frames are logged without seq, numbered when sent)."""
    return b'{"seq":' + str(seq).encode() + (b"," + body[1:] if len(body) > 2 else b"}")


def _depth(value: Any, limit: int) -> int:
    # Iterative, so a hostile 100k-deep document cannot blow the stack of the checker itself.
    stack: list[tuple[Any, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, d = stack.pop()
        if d > limit:
            return d
        deepest = max(deepest, d)
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def _request_id_of(data: Any) -> str | None:
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and 0 < len(rid) <= 128 else None


def _describe(e: ValidationError) -> str:
    first = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "frame"
    return f"{where}: {first['msg']}"


def decode_client_frame(raw: str | bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> ClientFrame:
    """Parse a client frame or raise ProtocolError(invalid_request) with a message that names the problem."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "frame is not valid JSON") from e
    if _depth(data, max_depth) > max_depth:
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"JSON nested deeper than {max_depth}", request_id=_request_id_of(data)
        )
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "frame must be a JSON object with a 'type'")
    try:
        return CLIENT_FRAME.validate_python(data)
    except ValidationError as e:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, _describe(e), request_id=_request_id_of(data)) from e


def decode_server_frame(raw: str | bytes) -> ServerFrame:
    return SERVER_FRAME.validate_json(raw)


class UnsupportedMessage(ValueError):
    """An internal message of a version or type this reader does not know: count it, ack it, drop it."""


def decode_internal(raw: bytes | str) -> Job | Reply | Forward:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise UnsupportedMessage("internal message is not JSON") from e
    version = data.get("v") if isinstance(data, dict) else None
    if type(version) is not int or version not in SUPPORTED_VERSIONS:  # `type`: True is an int, and == 1
        raise UnsupportedMessage(f"unsupported internal message version {version!r}")
    try:
        return INTERNAL_MESSAGE.validate_python(data)
    except ValidationError as e:
        raise UnsupportedMessage(f"unknown internal message: {_describe(e)}") from e
