"""Root pytest configuration: shared fixtures for every member's tests and markers applied by directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
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


# `make test` sets this: there every program and model is installed, so a skip can only hide a broken setup.
FORBID_SKIPS = os.environ.get("RTAI_FORBID_SKIPS") == "1"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if FORBID_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under `make test`, which must run every test: {reason}"
    return report


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
