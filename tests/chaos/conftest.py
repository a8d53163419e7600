from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import procs
from tests.support.redis_server import RedisHandle
from tests.support.sentinel import SentinelTopology

REPORTS: list[dict[str, Any]] = []
REPORT_FILE = Path(__file__).resolve().parents[2] / "artifacts" / "chaos-report.json"


@pytest.fixture
def topology() -> Iterator[SentinelTopology]:
    t = SentinelTopology().start()
    yield t
    t.stop()


@pytest.fixture
def redis_server_for_chaos(redis_server: RedisHandle) -> str:
    """A plain Redis (no Sentinel) for scenarios about the edge, not about Redis."""
    return redis_server.url


@pytest.fixture
def services() -> Iterator[list[procs.Service]]:
    started: list[procs.Service] = []
    yield started
    for s in reversed(started):
        s.stop(timeout=20)


@pytest.fixture
def record() -> Any:
    def add(report: dict[str, Any]) -> dict[str, Any]:
        REPORTS.append(report)
        return report

    return add


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    REPORT_FILE.parent.mkdir(exist_ok=True)
    REPORT_FILE.write_text(json.dumps(REPORTS, indent=2))
    tr = terminalreporter
    tr.section("chaos scenarios")
    cols = [
        "scenario",
        "sent",
        "results",
        "errors",
        "lost",
        "duplicates",
        "p99_ms_during_fault",
        "recover_s",
        "reconnects",
        "resumed",
    ]
    tr.write_line(" | ".join(cols))
    for r in REPORTS:
        tr.write_line(" | ".join(str(r.get(c)) for c in cols))
