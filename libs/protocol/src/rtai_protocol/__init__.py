"""rtai wire protocol: client frames (client.py), internal Redis messages (internal.py), codec and error codes."""

from rtai_protocol.client import (
    FINAL_TYPES,
    PROTOCOL_VERSION,
    Accepted,
    Auth,
    Cancel,
    Chunk,
    ClientFrame,
    Error,
    Hello,
    Infer,
    InferOptions,
    Result,
    ServerFrame,
    Welcome,
)
from rtai_protocol.codec import decode_client_frame, decode_internal, decode_server_frame, encode, with_seq
from rtai_protocol.errors import RETRYABLE, ErrorCode, ProtocolError
from rtai_protocol.internal import Forward, Job, Reply, now_ms

__all__ = [
    "FINAL_TYPES",
    "PROTOCOL_VERSION",
    "RETRYABLE",
    "Accepted",
    "Auth",
    "Cancel",
    "Chunk",
    "ClientFrame",
    "Error",
    "ErrorCode",
    "Forward",
    "Hello",
    "Infer",
    "InferOptions",
    "Job",
    "ProtocolError",
    "Reply",
    "Result",
    "ServerFrame",
    "Welcome",
    "decode_client_frame",
    "decode_internal",
    "decode_server_frame",
    "encode",
    "now_ms",
    "with_seq",
]
