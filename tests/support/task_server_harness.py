"""Driving one worker TaskServer in the test process against a real Redis: the server, and jobs as a gateway makes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from rtai_protocol import Job
from rtai_worker.consumer import Consumer
from rtai_worker.metrics import WorkerMetrics
from rtai_worker.model_threads import ModelCallHung
from rtai_worker.settings import WorkerSettings
from rtai_worker.task_server import TaskServer


def no_hang(e: ModelCallHung) -> None:
    pytest.fail(f"no model call should hang here: {e}")  # a BaseException: the worker's error handling lets it by


def task_server(consumer: Consumer, model: Any, settings: WorkerSettings | None = None) -> TaskServer:
    """A task server for `consumer`'s task, with metrics of its own."""
    return TaskServer(
        consumer.task, model, consumer, settings or WorkerSettings(), WorkerMetrics(CollectorRegistry()), no_hang
    )


def make_job(n: int, reply_to: str, **update: Any) -> Job:
    """Request `r{n}` of a `sentiment` job due in 30 s, answered on `reply_to`; `update` changes any field."""
    now = int(time.time() * 1000)
    job = Job(
        job_id=uuid.uuid4().hex,
        request_id=f"r{n}",
        owner="o",
        session="s",
        task="sentiment",
        input="a fine day",
        deadline_ms=now + 30_000,
        enqueued_ms=now,
        reply_to=reply_to,
    )
    return job.model_copy(update=update) if update else job


async def stop_serving(server: TaskServer, serving: asyncio.Task[None]) -> None:
    """Stop a server's read loop started as `serving` and its streams, as a test's teardown."""
    server.stopping.set()
    server.streams.cancel()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


@contextlib.asynccontextmanager
async def serving(server: TaskServer) -> AsyncIterator[None]:
    """The server's read loop running for the block."""
    task = asyncio.create_task(server.serve())
    try:
        yield
    finally:
        await stop_serving(server, task)
