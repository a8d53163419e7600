"""Root pytest configuration: shared fixtures for every member's tests and markers applied by directory."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.redis_server import RedisHandle, start_redis

ROOT = Path(__file__).resolve().parent
MARKERS_BY_DIR = {
    "tests/integration": "integration",
    "tests/chaos": "chaos",
    "tests/browser": "browser",
    "tests/deploy": "deploy",
    "tests/observability": "observability",
    "tests/bench": "integration",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(ROOT).as_posix()
        for prefix, marker in MARKERS_BY_DIR.items():
            if rel.startswith(prefix + "/"):
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisHandle]:
    """One real Redis for the session (see tests/support/redis_server.py); tests isolate by key prefix."""
    handle = start_redis()
    yield handle
    handle.close()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: no test sees another's keys, and nothing is ever flushed."""
    return f"t{uuid.uuid4().hex[:12]}"
