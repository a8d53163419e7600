"""Fixtures for the edge-security suite: real Redis, real gateway and worker processes, stopped by PID.

The root conftest marks no test here: each module marks itself (`integration` for real processes).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from tests.support import procs
from tests.support.redis_server import RedisHandle

JWT_SECRET = "rtai-test-jwt-secret-6f1c2a9be0d44e7f"
AUDIENCE = "rtai-test"
ISSUER = "https://idp.test"


def token(sub: str, *, secret: str = JWT_SECRET, ttl_s: int = 300, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now, "exp": now + ttl_s, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


JWT_ENV = {
    "AUTH__MODE": "jwt",
    "AUTH__JWT__SECRET": JWT_SECRET,
    "AUTH__JWT__AUDIENCE": AUDIENCE,
    "AUTH__JWT__ISSUER": ISSUER,
}


@pytest.fixture(scope="module")
def module_prefix() -> str:
    return f"s{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def module_services(redis_server: RedisHandle) -> Iterator[list[procs.Service]]:
    started: list[procs.Service] = []
    yield started
    for s in reversed(started):
        s.stop(timeout=15)


@pytest.fixture
def sec_services(redis_server: RedisHandle) -> Iterator[list[procs.Service]]:
    started: list[procs.Service] = []
    yield started
    for s in reversed(started):
        s.stop(timeout=15)


async def metrics_text(g: procs.Service) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(f"{g.base}/metrics", timeout=5)).text
