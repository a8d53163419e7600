"""Fixtures for the live observability test: one stack (redis-server, gateway, worker, Prometheus) per module,
loaded once by `obs_load.drive_load`. The processes are this module's own (not the shared fixtures) because the
test pauses, kills and adds workers, and Prometheus must know every scrape target before it starts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from obs_load import LiveRun, drive_load
from obs_stack import REDIS_SERVER, Stack, prom_query, running_stack
from obs_support import PROMETHEUS

# Series that only exist once the load's failures happened: waiting for them tells us Prometheus has scraped
# every step of the load at least once.
_AFTER_LOAD = (
    "rtai_gateway_admission_refusals_total",
    "rtai_worker_reclaimed_total",
    "rtai_worker_reruns_total",
    "rtai_worker_dead_lettered_total",
    "task_quantile:rtai_gateway_first_chunk_seconds:histogram_quantile_5m",
    'rtai_gateway_requests_total{outcome="unknown_task"}',
)


def _wait_for_scrapes(stack: Stack, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    missing = list(_AFTER_LOAD)
    while missing and time.monotonic() < deadline:
        missing = [q for q in missing if not prom_query(stack.prometheus_url, q)]
        time.sleep(0.5)
    time.sleep(2)  # two more scrapes and rule evaluations of the final state
    return missing


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    for binary in (PROMETHEUS, REDIS_SERVER):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: install Debian's prometheus and redis-server packages")
    workdir: Path = tmp_path_factory.mktemp("live-prometheus")
    with running_stack(workdir, admission__max_backlog="5") as stack:
        try:
            report = drive_load(stack)
        except Exception as e:
            raise AssertionError(f"load failed: {e!r}\n{stack.logs()}") from e
        missing = _wait_for_scrapes(stack)
        if missing:
            print(f"series still missing after the load: {missing}")
        yield LiveRun(stack, report)
