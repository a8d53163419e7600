"""Write a Redis ACL file with least-privilege users for the gateway and the inference worker.

Each user may touch only its keys under the deployment's prefix, publish/subscribe only its channel, and run only
the commands its code sends (including those its Lua scripts call: Redis checks those against the caller's ACL too).
Passwords go into the file as SHA-256 hashes (`#<hex>`), never in clear.

    python scripts/redis_acl.py --prefix rtai \
        --gateway-password-file gw.pw --worker-password-file worker.pw --admin-password-file admin.pw > users.acl
    redis-server --aclfile users.acl

Then run the gateway with RTAI_GW_REDIS__USERNAME=rtai-gateway RTAI_GW_REDIS__PASSWORD=... and the worker with
RTAI_WORKER_REDIS__USERNAME=rtai-worker RTAI_WORKER_REDIS__PASSWORD=... (from a Kubernetes Secret). The command lists
below come from reading the code (grep for Redis calls in libs/transport, the gateway and the worker); the test
tests/security/test_redis_acl.py runs both services end to end under these users and fails on any ACL denial.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

GATEWAY_USER = "rtai-gateway"
WORKER_USER = "rtai-worker"
ADMIN_USER = "rtai-admin"

# Connection upkeep every client needs (AUTH and HELLO are always allowed; CLIENT SETNAME names each connection).
_COMMON = ["ping", "multi", "exec", "discard", "info", "client|setname"]
# redis-py's readiness probe and the backlog gauges (rtai_transport.health, rtai_transport.backlog).
_HEALTH = ["set", "get", "xlen", "xrange", "xpending"]

GATEWAY_COMMANDS = sorted(
    {
        *_COMMON,
        *_HEALTH,
        # hub, lifecycle, loops, app: replies, resume, cancel, heartbeat
        "evalsha",
        "script|load",
        "xadd",
        "xread",
        "xtrim",
        "xdel",
        "hset",
        "hgetall",
        "expire",
        "exists",
        "del",
        "publish",
        # the task registry (rtai_transport.registry.registered_tasks: every registered task and its live workers)
        "zcount",
        # inside the gateway's Lua scripts (LOG_FRAME, SUBMIT, CLAIM_SESSION); SUBMIT reads a request resent in the
        # same session (a resend, a resume on another gateway) with HMGET
        "incr",
        "xrevrange",
        "hget",
        "hmget",
        "hexists",
        "hdel",
    }
)

WORKER_COMMANDS = sorted(
    {
        *_COMMON,
        *_HEALTH,
        # the consumer: group reads, reclaim, acks, replies, dead letters, cancel flags
        "xgroup|create",
        "xreadgroup",
        "xautoclaim",
        "xclaim",
        "xack",
        "xdel",
        "xadd",
        "expire",
        "mget",
        # the cancel wake-up channel
        "subscribe",
        "unsubscribe",
        # task registration (REGISTER_TASK script, deregister, live tasks for gauges); CLAIM_OWNED (EVALSHA, loaded
        # on NOSCRIPT) and, inside it, xpending and xclaim
        "eval",
        "evalsha",
        "script|load",
        "zrem",
        "zcount",
        "hgetall",
        # inside REGISTER_TASK
        "zremrangebyscore",
        "hget",
        "zcard",
        "zrange",
        "hset",
        "zadd",
        # inside FORGET_TASK (`python -m rtai_worker declare` with retired tasks, or `forget`)
        "hdel",
        # inside PRUNE_CONSUMERS (gone workers leave their task groups)
        "xinfo|consumers",
        "xgroup|delconsumer",
    }
)


def worker_key_patterns(prefix: str) -> list[str]:
    """The worker never sees session logs or stored results: a compromised worker cannot read other users' frames
    except the jobs it is given."""
    root = f"{prefix}:v1"
    return [
        f"{root}:jobs:*",
        f"{root}:dlq:*",
        f"{root}:replies:*",
        f"{root}:tasks",
        f"{root}:task:*",
        f"{root}:cancel:*",
        f"{root}:probe",
    ]


def _hash(password: str) -> str:
    if not password or password.strip() != password or len(password) < 16:
        raise ValueError("passwords must be at least 16 characters without surrounding whitespace")
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def acl_lines(prefix: str, gateway_password: str, worker_password: str, admin_password: str | None = None) -> list[str]:
    if not re.fullmatch(r"[A-Za-z0-9_\-.]+", prefix):
        raise ValueError("prefix must match [A-Za-z0-9_-.]+ (as RedisSettings.prefix)")
    root = f"{prefix}:v1"
    channel = f"&{root}:cancel"

    def user(name: str, password: str, keys: list[str], commands: list[str]) -> str:
        parts = ["user", name, "reset", "on", _hash(password), "resetkeys", *(f"~{k}" for k in keys)]
        parts += ["resetchannels", channel, "-@all", *(f"+{c}" for c in commands)]
        return " ".join(parts)

    lines = [
        # No anonymous access: a client without credentials can do nothing.
        "user default off resetkeys resetchannels -@all",
        user(GATEWAY_USER, gateway_password, [f"{root}:*"], GATEWAY_COMMANDS),
        user(WORKER_USER, worker_password, worker_key_patterns(prefix), WORKER_COMMANDS),
    ]
    if admin_password is not None:
        lines.append(f"user {ADMIN_USER} reset on {_hash(admin_password)} ~* &* +@all")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="rtai")
    parser.add_argument("--gateway-password-file", type=Path, required=True)
    parser.add_argument("--worker-password-file", type=Path, required=True)
    parser.add_argument("--admin-password-file", type=Path)
    args = parser.parse_args()

    def read(p: Path | None) -> str | None:
        return None if p is None else p.read_text().strip()

    lines = acl_lines(
        args.prefix,
        read(args.gateway_password_file) or "",
        read(args.worker_password_file) or "",
        read(args.admin_password_file),
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
