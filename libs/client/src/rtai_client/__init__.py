"""rtai_client: the async Python SDK (`Client`) and the `rtai` command line.

The core SDK depends only on `rtai_protocol` and `websockets`: no Redis, no server code. `rtai dlq` imports redis
lazily, `rtai bench` uses `rtai_client.loadgen`.
"""

from rtai_client._http import TaskInfo
from rtai_client.backoff import Backoff
from rtai_client.client import Client
from rtai_client.errors import ConnectionLost, RequestError, RequestTimeout, RtaiError, SessionLost
from rtai_client.stream import Stream
from rtai_protocol import Accepted, Chunk, Error, Result, Welcome

__all__ = [
    "Accepted",
    "Backoff",
    "Chunk",
    "Client",
    "ConnectionLost",
    "Error",
    "RequestError",
    "RequestTimeout",
    "Result",
    "RtaiError",
    "SessionLost",
    "Stream",
    "TaskInfo",
    "Welcome",
]
