"""rtai Redis transport: one client factory, all key names, Lua scripts, task registry, backlog and health readers."""

from rtai_transport.client import Redis, close_redis, connection_name, create_redis, text
from rtai_transport.errors import TaskConfigConflict, TransportError
from rtai_transport.keys import WORKER_GROUP, Keys
from rtai_transport.settings import RedisSettings

__all__ = [
    "WORKER_GROUP",
    "Keys",
    "Redis",
    "RedisSettings",
    "TaskConfigConflict",
    "TransportError",
    "close_redis",
    "connection_name",
    "create_redis",
    "text",
]
