"""`python -m rtai_worker`: one worker process (scale with replicas)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from pydantic import ValidationError

from rtai_telemetry.logging import configure_logging, get_logger
from rtai_telemetry.tracing import setup_tracing, shutdown_tracing
from rtai_transport import TaskConfigConflict
from rtai_worker.models import ModelSpecError
from rtai_worker.run import Worker
from rtai_worker.settings import WorkerSettings


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): cheaper Redis round trips and thread hand-offs."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> int:
    try:
        settings = WorkerSettings()
    except ValidationError as e:
        sys.stderr.write(f"invalid worker settings:\n{e}\n")
        return 2
    configure_logging(json=settings.log_json, level=settings.log_level)
    setup_tracing("rtai-worker")
    log = get_logger("rtai_worker")
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(Worker(settings).run())
    except (ModelSpecError, TaskConfigConflict) as e:
        log.error("worker.refused", reason=str(e))
        return 3
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
